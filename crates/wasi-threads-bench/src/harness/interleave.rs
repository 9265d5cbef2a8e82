//! Interleaved measurement and its table: within one repetition the runners
//! take turns (the first one rotating), so a change in the machine's load
//! hits them all. The times are medians over the repetitions; a ratio is the
//! median of the repetitions' own ratios (see [`Row::ratio`]). Each group is
//! measured idle and again under CPU hogs ([`idle_and_loaded`]).

use super::hogs::Hogs;
use super::peers::{Runner, Tools, Workload};
use super::{Bench, median};

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

    /// The `p`-th percentile (nearest rank) of `runner`'s samples.
    pub fn percentile(&self, runner: Runner, p: f64) -> Option<u64> {
        let mut have: Vec<u64> = self.samples(runner)?.iter().flatten().copied().collect();
        have.sort_unstable();
        nearest_rank(&have, p).copied()
    }

    /// The repetitions' own ratios of `a` over `b`, sorted.
    pub fn ratios(&self, a: Runner, b: Runner) -> Vec<f64> {
        let (Some(a), Some(b)) = (self.samples(a), self.samples(b)) else {
            return Vec::new();
        };
        let mut ratios: Vec<f64> = a
            .iter()
            .zip(b)
            .filter_map(|(a, b)| match (a, b) {
                (Some(a), Some(b)) if *a > 0 && *b > 0 => Some(*a as f64 / *b as f64),
                _ => None,
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios
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

/// The `p`-th percentile (0 < p <= 1) of sorted `v`, by nearest rank.
fn nearest_rank<T>(v: &[T], p: f64) -> Option<&T> {
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
    v.get(rank - 1)
}

/// With 10 repetitions or more, each row's distribution: every runner's
/// 10th, 50th and 90th percentile, and the same of the repetitions' own
/// ratios against wasmtime 36 (a median alone hides how often a run is
/// slow).
pub fn print_distribution(rows: &[Row]) {
    for r in rows {
        let reps = r.samples.first().map_or(0, |(_, s)| s.len());
        if reps < 10 {
            continue;
        }
        let mut line = format!("  {} ({reps} reps), ms p10/p50/p90:", r.label);
        for (runner, _) in &r.samples {
            let at = |p| {
                r.percentile(*runner, p)
                    .map_or("-".to_string(), |v| format!("{:.0}", v as f64 / 1e6))
            };
            line.push_str(&format!(
                " {} {}/{}/{};",
                runner.label(),
                at(0.1),
                at(0.5),
                at(0.9)
            ));
        }
        for a in [Runner::Lib, Runner::Cli, Runner::Native] {
            let ratios = r.ratios(a, Runner::Wasmtime36);
            if let (Some(p10), Some(p50), Some(p90)) = (
                nearest_rank(&ratios, 0.1),
                nearest_rank(&ratios, 0.5),
                nearest_rank(&ratios, 0.9),
            ) {
                line.push_str(&format!(
                    " {}/wt36 p10/p50/p90 {p10:.2}/{p50:.2}/{p90:.2};",
                    a.label()
                ));
            }
        }
        println!("{}", line.trim_end_matches(';'));
    }
}

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
        let rows = measure(b, tools, work, reps);
        print(&rows);
        print_distribution(&rows);
    }
    if loads.hogs {
        header(&format!(
            "{title} — with {cores} CPU-hog threads on {cores} cores"
        ));
        let hogs = Hogs::start(cores);
        let rows = measure(b, tools, work, reps);
        drop(hogs);
        print(&rows);
        print_distribution(&rows);
    }
}

#[derive(Clone, Copy)]
pub struct Loads {
    pub idle: bool,
    pub hogs: bool,
}
