//! `--schedule`, `--replay` and `--explore`: the schedule mode on the
//! command line.

use std::io::Write as _;
use wasi_threads_host::{
    DEFAULT_PCT_DEPTH, Explore, ExploreReport, Granularity, Mix, Outcome, Run, Schedule, Strategy,
    Trace,
};

/// `--schedule SPEC`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub seed: u64,
    /// `None`: random for one run, PCT and random by turns for `--explore`.
    pub pct: Option<bool>,
    pub depth: u32,
    pub length: Option<u64>,
    pub granularity: Granularity,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            seed: 0,
            pct: None,
            depth: DEFAULT_PCT_DEPTH,
            length: None,
            granularity: Granularity::Atomics,
        }
    }
}

impl Spec {
    pub fn parse(value: &str) -> Result<Spec, String> {
        let mut spec = Spec::default();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, val) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item, None),
            };
            let number = |what: &str| -> Result<u64, String> {
                val.ok_or_else(|| format!("--schedule {key}: needs a value ({key}={what})"))?
                    .parse()
                    .map_err(|_| format!("--schedule {item}: not a number"))
            };
            match key {
                "seed" => spec.seed = number("N")?,
                "random" if val.is_none() => spec.pct = Some(false),
                "pct" if val.is_none() => spec.pct = Some(true),
                "depth" => {
                    spec.pct = Some(true);
                    spec.depth = u32::try_from(number("D")?)
                        .map_err(|_| format!("--schedule {item}: too large"))?
                        .max(1);
                }
                "length" => {
                    spec.pct = Some(true);
                    spec.length = Some(number("L")?.max(1));
                }
                "accesses" if val.is_none() => spec.granularity = Granularity::Accesses,
                "atomics" if val.is_none() => spec.granularity = Granularity::Atomics,
                _ => {
                    return Err(format!(
                        "--schedule {item}: unknown; expected seed=N, random, pct, depth=D, \
                         length=L, atomics or accesses"
                    ));
                }
            }
        }
        Ok(spec)
    }

    /// The schedule of one run: a replay of `trace`, or the strategy asked
    /// for.
    pub fn schedule(&self, trace: Option<Trace>) -> Schedule {
        let strategy = match (trace, self.pct) {
            (Some(trace), _) => Strategy::Replay(trace),
            (None, Some(true)) => Strategy::Pct {
                depth: self.depth,
                length: self.length.unwrap_or(wasi_threads_host::DEFAULT_PCT_LENGTH),
            },
            (None, _) => Strategy::Random,
        };
        Schedule::new(self.seed, strategy).granularity(self.granularity)
    }

    /// The exploration `--explore runs` asks for.
    pub fn explore(&self, runs: u64, compare_stdout: bool, jobs: Option<usize>) -> Explore {
        let mix = match self.pct {
            Some(true) => Mix::Pct,
            Some(false) => Mix::Random,
            None => Mix::Both,
        };
        let mut explore = Explore::new(runs)
            .first_seed(self.seed)
            .mix(mix)
            .depth(self.depth)
            .compare_stdout(compare_stdout)
            .granularity(self.granularity);
        if let Some(jobs) = jobs {
            explore = explore.jobs(jobs);
        }
        explore
    }
}

/// The options of ours that an exploration's replay command leaves out
/// (and whether each takes a value).
const EXPLORE_ONLY: [(&str, bool); 5] = [
    ("--schedule", true),
    ("--replay", true),
    ("--explore", true),
    ("--explore-stdout", false),
    ("--jobs", true),
];

/// The command line that replays `failure`: the original one without the
/// exploration's options, with `--schedule seed=N --replay TRACE` before the
/// module.
pub fn replay_command(
    argv: &[String],
    module_and_args: usize,
    seed: u64,
    granularity: Granularity,
    trace: &Trace,
) -> String {
    let split = argv.len().saturating_sub(module_and_args);
    let (options, guest) = argv.split_at(split);
    let mut words: Vec<String> = vec!["wasi-threads".into()];
    let mut skip_value = false;
    for word in options.iter().skip(1) {
        if skip_value {
            skip_value = false;
            continue;
        }
        if let Some((_, takes)) = EXPLORE_ONLY.iter().find(|(flag, _)| word == flag) {
            skip_value = *takes;
            continue;
        }
        if EXPLORE_ONLY
            .iter()
            .any(|(flag, takes)| *takes && word.starts_with(&format!("{flag}=")))
        {
            continue;
        }
        words.push(word.clone());
    }
    let accesses = match granularity {
        Granularity::Accesses => ",accesses",
        Granularity::Atomics => "",
    };
    words.push("--schedule".into());
    words.push(format!("seed={seed}{accesses}"));
    words.push("--replay".into());
    words.push(trace.to_string());
    words.extend(guest.iter().cloned());
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `word` as a POSIX shell reads it back.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=.,:/@%+".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Prints what an exploration found, and the output of the run that stands
/// for it (the failing one, or the first), as the program would have
/// printed it. Returns the outcome the process exits with.
pub fn report(
    report: &ExploreReport,
    first: Option<&Run>,
    module: &str,
    replay: impl Fn(&Trace, u64, Granularity) -> String,
) -> Outcome {
    let stderr = &mut std::io::stderr();
    match &report.failure {
        None => {
            if let Some(run) = first {
                let _ = std::io::stdout().write_all(&run.stdout);
                let _ = stderr.write_all(&run.stderr);
            }
            let _ = writeln!(
                stderr,
                "wasi-threads: explored {} schedules of {module}: none failed (up to {} \
                 scheduling points a run, {} preemptions in all)",
                report.runs, report.max_steps, report.preemptions
            );
            Outcome::Exit { code: 0, tid: 0 }
        }
        Some(failure) => {
            let _ = std::io::stdout().write_all(&failure.run.stdout);
            let _ = stderr.write_all(&failure.run.stderr);
            let strategy = match failure.schedule.strategy() {
                Strategy::Pct { depth, .. } => format!("PCT, depth {depth}"),
                Strategy::Random => "random".into(),
                Strategy::Replay(_) => "replay".into(),
            };
            let seed = failure.schedule.seed();
            let _ = writeln!(
                stderr,
                "wasi-threads: schedule {} of {} ({strategy}, seed {seed}) fails: {}",
                report.runs, module, failure.why
            );
            if failure.replayed {
                let mut threads: Vec<u32> =
                    failure.trace.switches().iter().map(|s| s.tid).collect();
                threads.sort_unstable();
                threads.dedup();
                let _ = writeln!(
                    stderr,
                    "wasi-threads: shrunk from {} preemptions to {} ({} forced switches, to \
                     threads {threads:?})",
                    failure.preemptions.0,
                    failure.preemptions.1,
                    failure.trace.len()
                );
            } else {
                let _ = writeln!(
                    stderr,
                    "wasi-threads: warning: replaying its trace did not fail the same way (does \
                     the program read something outside the schedule: stdin, files, another \
                     process?); the seed alone replays it"
                );
            }
            let _ = writeln!(
                stderr,
                "wasi-threads: replay with:\n  {}",
                replay(&failure.trace, seed, failure.schedule.granularity_of())
            );
            failure.run.outcome.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(Spec::parse("").unwrap(), Spec::default());
        let spec = Spec::parse("seed=7,pct,depth=4,accesses").unwrap();
        assert_eq!(spec.seed, 7);
        assert_eq!(spec.pct, Some(true));
        assert_eq!(spec.depth, 4);
        assert_eq!(spec.granularity, Granularity::Accesses);
        assert_eq!(Spec::parse("random").unwrap().pct, Some(false));
        assert!(Spec::parse("seed").is_err());
        assert!(Spec::parse("seed=x").is_err());
        assert!(Spec::parse("fast").is_err());
    }

    #[test]
    fn a_replay_command_keeps_everything_but_the_exploration() {
        let argv: Vec<String> = [
            "/bin/wasi-threads",
            "--dir",
            ".",
            "--explore",
            "100",
            "--schedule=seed=5,pct",
            "--jobs",
            "2",
            "--explore-stdout",
            "m.wasm",
            "load-store",
            "it's",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let trace: Trace = "10:1,20:0".parse().unwrap();
        let line = replay_command(&argv, 3, 42, Granularity::Accesses, &trace);
        assert_eq!(
            line,
            "wasi-threads --dir . --schedule seed=42,accesses --replay 10:1,20:0 m.wasm \
             load-store 'it'\\''s'"
        );
    }
}
