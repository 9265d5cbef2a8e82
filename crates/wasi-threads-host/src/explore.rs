//! Exploration: a program run under many schedules until one makes it fail,
//! that schedule shrunk to the fewest switches that still fail, and the
//! one line that replays it.
//!
//! It sits on top of the schedule mode ([`crate::schedule`]) and of the
//! program's [`Outcome`], beside [`Runner`](crate::Runner).
//!
//! The explorer does not run programs itself: it calls the embedder's
//! `run` with a [`Schedule`] and looks at the [`Run`] it returns, so that
//! how a program is run (a [`Runner`](crate::Runner), a
//! [`WasiThreads`](crate::WasiThreads) with the embedder's own host
//! functions, a child process) is the caller's choice.

use crate::program::Outcome;
use crate::schedule::{DEFAULT_PCT_DEPTH, Schedule, ScheduleReport, Strategy, Trace};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wasmtime::{Result, bail};

/// What one scheduled run of a program gave.
#[derive(Clone, Debug)]
pub struct Run {
    /// How it ended.
    pub outcome: Outcome,
    /// What it wrote to stdout (compared between runs when
    /// [`Explore::compare_stdout`] asks).
    pub stdout: Vec<u8>,
    /// What it wrote to stderr (shown for a failure).
    pub stderr: Vec<u8>,
    /// The schedule's report ([`Schedule::log`]).
    pub report: Option<ScheduleReport>,
}

/// Which strategies the seeds of an exploration use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// PCT for every seed.
    Pct,
    /// Uniform random for every seed.
    Random,
    /// PCT and uniform random by turns (even seeds PCT).
    Both,
}

/// How to explore: how many seeds from which, with what.
#[derive(Clone, Debug)]
pub struct Explore {
    runs: u64,
    first_seed: u64,
    mix: Mix,
    depth: u32,
    jobs: usize,
    compare_stdout: bool,
    shrink_runs: u64,
    shrink_time: Duration,
    granularity: crate::Granularity,
}

impl Explore {
    /// `runs` seeds from 0, PCT and random by turns, on every core,
    /// shrinking a failure with up to 1000 more runs in up to a minute.
    pub fn new(runs: u64) -> Self {
        Explore {
            runs,
            first_seed: 0,
            mix: Mix::Both,
            depth: DEFAULT_PCT_DEPTH,
            jobs: std::thread::available_parallelism().map_or(1, usize::from),
            compare_stdout: false,
            shrink_runs: 1000,
            shrink_time: Duration::from_secs(60),
            granularity: crate::Granularity::Atomics,
        }
    }

    /// The first seed (seeds are consecutive).
    pub fn first_seed(mut self, seed: u64) -> Self {
        self.first_seed = seed;
        self
    }

    /// The strategies.
    pub fn mix(mut self, mix: Mix) -> Self {
        self.mix = mix;
        self
    }

    /// PCT's depth: bugs needing up to `depth - 1` ordering constraints.
    pub fn depth(mut self, depth: u32) -> Self {
        self.depth = depth.max(1);
        self
    }

    /// How many programs run at once (each runs one thread at a time).
    pub fn jobs(mut self, jobs: usize) -> Self {
        self.jobs = jobs.max(1);
        self
    }

    /// A run whose stdout differs from the first seed's fails too.
    pub fn compare_stdout(mut self, compare: bool) -> Self {
        self.compare_stdout = compare;
        self
    }

    /// At most this many runs to shrink a failing schedule (0: keep it as
    /// found).
    pub fn shrink_runs(mut self, runs: u64) -> Self {
        self.shrink_runs = runs;
        self
    }

    /// At most this long shrinking a failing schedule (a slow program's
    /// 1000 runs could otherwise take long): what shrinking found by then is
    /// what is reported, so the printed trace may differ between two
    /// explorations of a slow program; it replays the failure either way.
    pub fn shrink_time(mut self, limit: Duration) -> Self {
        self.shrink_time = limit;
        self
    }

    /// The granularity every schedule asks for.
    pub fn granularity(mut self, granularity: crate::Granularity) -> Self {
        self.granularity = granularity;
        self
    }

    /// The schedule of seed `seed`, PCT spreading its changes over `length`
    /// steps.
    fn schedule(&self, seed: u64, length: u64) -> Schedule {
        let pct = match self.mix {
            Mix::Pct => true,
            Mix::Random => false,
            Mix::Both => seed.is_multiple_of(2),
        };
        let strategy = if pct {
            Strategy::Pct {
                depth: self.depth,
                length,
            }
        } else {
            Strategy::Random
        };
        Schedule::new(seed, strategy).granularity(self.granularity)
    }
}

/// A schedule under which the program failed.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The schedule as explored.
    pub schedule: Schedule,
    /// Why the run counts as failed.
    pub why: String,
    /// The run the shrunk trace replays (the run as found, when it could
    /// not be replayed).
    pub run: Run,
    /// The shortest trace found that fails the same way, replayed with
    /// `Schedule::replay(seed, trace)`.
    pub trace: Trace,
    /// Preemptions of the run as found, and of the shrunk trace's run.
    pub preemptions: (u64, u64),
    /// Whether replaying the trace failed the same way (a program whose
    /// runs depend on something outside the schedule may not).
    pub replayed: bool,
}

impl Failure {
    /// The schedule that replays the shrunk failure.
    pub fn replay(&self) -> Schedule {
        Schedule::replay(self.schedule.seed(), self.trace.clone())
            .granularity(self.schedule.granularity_of())
    }
}

/// What an exploration found.
#[derive(Clone, Debug)]
pub struct ExploreReport {
    /// Seeds run (the failing one included).
    pub runs: u64,
    /// The lowest failing seed's failure, if any seed failed.
    pub failure: Option<Failure>,
    /// The most scheduling points one run took.
    pub max_steps: u64,
    /// Preemptions over all runs.
    pub preemptions: u64,
}

/// Whether `run` fails: a non-zero exit, a trap, a time-out, a deadlock, or
/// (with `reference`) a stdout that differs from it.
fn verdict(run: &Run, reference: Option<&[u8]>) -> Option<String> {
    match &run.outcome {
        Outcome::Exit { code: 0, .. } => {}
        other => return Some(other.to_string()),
    }
    match reference {
        Some(expected) if expected != run.stdout.as_slice() => {
            Some("stdout differs from the first run's".into())
        }
        _ => None,
    }
}

/// Runs the program under `config.runs` schedules, seed after seed, up to
/// `config.jobs` at once, and stops at the first that fails (the lowest
/// failing seed: every lower seed has run). A failing schedule is then
/// shrunk: switches are dropped from its trace as long as the replay still
/// fails the same way.
///
/// `run` must run the program once under the given schedule, with the same
/// inputs every time; an `Err` (the program could not start) ends the
/// exploration with that error.
pub fn explore(
    config: &Explore,
    run: impl Fn(Schedule) -> Result<Run> + Sync,
) -> Result<ExploreReport> {
    if config.runs == 0 {
        bail!("an exploration needs at least one run");
    }
    // The first seed alone: its stdout is the reference, and its length
    // what PCT spreads its priority changes over.
    let first = config.first_seed;
    let probe = config.schedule(first, crate::schedule::DEFAULT_PCT_LENGTH);
    let first_run = run(probe.clone())?;
    let steps = first_run.report.as_ref().map_or(0, |r| r.steps);
    let length = steps.max(100);
    let reference = config.compare_stdout.then(|| first_run.stdout.clone());
    let reference = reference.as_deref();
    let stats = Stats::default();
    stats.add(&first_run);
    if let Some(why) = verdict(&first_run, None) {
        let failure = shrink(config, probe, why, first_run, reference, &run);
        return Ok(stats.report(1, Some(failure)));
    }

    let next = AtomicU64::new(1);
    // The lowest failing seed's index so far, and its run.
    let found: Mutex<Option<(u64, Schedule, String, Run)>> = Mutex::new(None);
    let error: Mutex<Option<wasmtime::Error>> = Mutex::new(None);
    let lowest_failure = || {
        found
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(u64::MAX, |f| f.0)
    };
    std::thread::scope(|scope| {
        for _ in 0..config.jobs.min(config.runs as usize) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= config.runs || i > lowest_failure() {
                        return;
                    }
                    if error.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                        return;
                    }
                    let seed = first.wrapping_add(i);
                    let schedule = config.schedule(seed, length);
                    match run(schedule.clone()) {
                        Ok(result) => {
                            stats.add(&result);
                            if let Some(why) = verdict(&result, reference) {
                                let mut found = found.lock().unwrap_or_else(|e| e.into_inner());
                                if found.as_ref().is_none_or(|f| i < f.0) {
                                    *found = Some((i, schedule, why, result));
                                }
                            }
                        }
                        Err(e) => {
                            error
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let found = found.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(match found {
        Some((i, schedule, why, failed)) => {
            let failure = shrink(config, schedule, why, failed, reference, &run);
            stats.report(i + 1, Some(failure))
        }
        None => stats.report(config.runs, None),
    })
}

#[derive(Default)]
struct Stats {
    max_steps: AtomicU64,
    preemptions: AtomicU64,
}

impl Stats {
    fn add(&self, run: &Run) {
        if let Some(report) = &run.report {
            self.max_steps.fetch_max(report.steps, Ordering::Relaxed);
            self.preemptions
                .fetch_add(report.preemptions, Ordering::Relaxed);
        }
    }

    fn report(&self, runs: u64, failure: Option<Failure>) -> ExploreReport {
        ExploreReport {
            runs,
            failure,
            max_steps: self.max_steps.load(Ordering::Relaxed),
            preemptions: self.preemptions.load(Ordering::Relaxed),
        }
    }
}

/// What "failing the same way" means while shrinking: the same exit
/// status (a lost update's exit 1, a trap's 134), or for a stdout
/// mismatch, any stdout that differs.
fn same_failure(original: &Run, candidate: &Run, reference: Option<&[u8]>) -> bool {
    match verdict(candidate, reference) {
        None => false,
        Some(_) => candidate.outcome.exit_status() == original.outcome.exit_status(),
    }
}

/// Drops switches from the failing run's trace: all those to one thread at
/// a time first (fewer threads in the interleaving), then chunks, then one
/// by one (delta debugging), keeping every candidate whose replay still fails
/// the same way, within `config.shrink_runs` runs.
fn shrink(
    config: &Explore,
    schedule: Schedule,
    why: String,
    failed: Run,
    reference: Option<&[u8]>,
    run: &(impl Fn(Schedule) -> Result<Run> + Sync),
) -> Failure {
    let seed = schedule.seed();
    let granularity = schedule.granularity_of();
    let found_preemptions = failed.report.as_ref().map_or(0, |r| r.preemptions);
    let complete = failed.report.as_ref().is_some_and(|r| r.trace_complete);
    let mut trace = failed
        .report
        .as_ref()
        .map(|r| r.trace.clone())
        .unwrap_or_default();
    let mut budget = config.shrink_runs;
    let deadline = Instant::now().checked_add(config.shrink_time);
    let attempt = |trace: &Trace, budget: &mut u64| -> Option<Run> {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            *budget = 0;
        }
        if *budget == 0 {
            return None;
        }
        *budget -= 1;
        let replay = Schedule::replay(seed, trace.clone()).granularity(granularity);
        run(replay)
            .ok()
            .filter(|r| same_failure(&failed, r, reference))
    };
    // The trace as recorded must replay the failure, or shrinking it
    // means nothing.
    let mut best = if complete {
        attempt(&trace, &mut budget)
    } else {
        None
    };
    let replayed = best.is_some();
    if replayed {
        // Fewer threads first: every switch to one thread at once, for each
        // thread the trace switches to.
        let mut tids: Vec<u32> = trace.switches().iter().map(|s| s.tid).collect();
        tids.sort_unstable();
        tids.dedup();
        for tid in tids {
            let kept: Vec<_> = trace
                .switches()
                .iter()
                .copied()
                .filter(|s| s.tid != tid)
                .collect();
            if kept.len() == trace.len() {
                continue;
            }
            let candidate = Trace::new(kept);
            if let Some(result) = attempt(&candidate, &mut budget) {
                trace = candidate;
                best = Some(result);
            }
        }
        let mut chunk = trace.len().div_ceil(2).max(1);
        loop {
            let mut start = 0;
            while start < trace.len() && budget > 0 {
                let mut kept = trace.switches().to_vec();
                let end = (start + chunk).min(kept.len());
                kept.drain(start..end);
                let candidate = Trace::new(kept);
                match attempt(&candidate, &mut budget) {
                    Some(result) => {
                        trace = candidate;
                        best = Some(result);
                    }
                    None => start += chunk,
                }
            }
            if chunk == 1 || budget == 0 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
    }
    let (trace, shrunk_run) = match best {
        Some(result) => (trace, result),
        None => (
            failed
                .report
                .as_ref()
                .map(|r| r.trace.clone())
                .unwrap_or_default(),
            failed.clone(),
        ),
    };
    let shrunk_preemptions = shrunk_run
        .report
        .as_ref()
        .map_or(found_preemptions, |r| r.preemptions);
    Failure {
        schedule,
        why: verdict(&shrunk_run, reference).unwrap_or(why),
        run: shrunk_run,
        trace,
        preemptions: (found_preemptions, shrunk_preemptions),
        replayed,
    }
}
