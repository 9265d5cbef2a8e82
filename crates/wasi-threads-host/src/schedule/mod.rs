//! The schedule mode: every run of a threaded program a reproducible
//! function of (module, inputs, seed), and a search over seeds for the
//! interleavings that break it.
//!
//! What this part owns:
//!
//! - `scheduler`: the [`Scheduler`](scheduler::Scheduler) that lets one
//!   guest thread run at a time and switches at scheduling points, with
//!   virtual time and deadlock detection;
//! - `policy`: who runs next ([`Strategy`]: uniform random, PCT, or the
//!   replay of a [`Trace`]), and the seeded generator behind them;
//! - `environment`: the clocks and random bytes a scheduled program sees.
//!
//! It knows nothing of Wasmtime stores, the WASI layer or the program's
//! lifecycle: [`crate::program`] calls it at spawns, exits, waits and the
//! points the [rewrite](crate::rewrite) inserts (whose point kinds and
//! [`Granularity`](crate::Granularity) are all it uses of the rewrite); the
//! WASI layer for sleeps, yields, clocks and `random_get`. Exploring many
//! schedules ([`crate::explore()`]) sits on top, beside the `Runner`.
//!
//! # What a schedule guarantees, and what it does not
//!
//! Threads interleave only at scheduling points, so every execution is
//! sequentially consistent (as under shuttle or loom's default): a bug that
//! needs a weaker memory order to show is out of reach. Points are: every
//! atomic instruction on the shared memory, every WASI call, every spawn,
//! exit, `memory.atomic.wait`/`notify` and `sched_yield`, and a tick every
//! few loop iterations or calls of guest work. With
//! [`Granularity::Accesses`](crate::Granularity::Accesses) also every plain
//! load and store of the shared memory, so that data races between
//! non-atomic accesses show too.
//!
//! Virtualised: the monotonic and wall clocks (they start at 0 and at
//! [`VIRTUAL_EPOCH_SECS`], and advance by a microsecond per point; sleeps
//! and timed waits jump ahead instead of blocking), `random_get` (seeded),
//! thread ids and spawn order. Not virtualised: whatever comes from outside
//! the program: stdin, files and directories (a directory's listing order
//! is the host file system's), FIFOs another process writes, environment
//! and arguments as given. A `poll_oneoff` on file descriptors (rather than
//! on clocks alone) waits in real time.

pub(crate) mod environment;
pub(crate) mod policy;
pub(crate) mod scheduler;

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// The wall clock of a scheduled program starts here: 2020-01-01T00:00:00Z.
pub const VIRTUAL_EPOCH_SECS: u64 = 1_577_836_800;

/// The default PCT depth: bugs that need up to two ordering constraints
/// (three threads' worth of interleaving) are in reach of one run.
pub const DEFAULT_PCT_DEPTH: u32 = 3;
/// The default number of steps PCT spreads its priority changes over,
/// before a run has told how many a program takes.
pub const DEFAULT_PCT_LENGTH: u64 = 10_000;

/// How many stop checks of guest work a thread passes between two ticks
/// (each a scheduling point). Checks sit at loop heads and the entries of
/// functions that could otherwise run on unchecked, so this is a few dozen
/// loop iterations.
pub(crate) const TICK_CHECKS: i32 = 32;

/// What happened at a scheduling point, for a policy that cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Atomic,
    Wasi,
    Access,
    Tick,
    Spawn,
    Exit,
    Wait,
    Notify,
    Yield,
    Sleep,
}

impl Kind {
    /// The kind of a point the rewrite inserted, from its argument.
    pub(crate) fn from_guest(kind: i32) -> Kind {
        match kind {
            crate::rewrite::point_kind::ATOMIC => Kind::Atomic,
            crate::rewrite::point_kind::WASI => Kind::Wasi,
            _ => Kind::Access,
        }
    }
}

/// How the threads of a program run in the schedule mode: one at a time,
/// switching where a seeded [`Strategy`] says.
///
/// The seed decides the policy's choices and everything else a scheduled
/// program could see differ between runs (`random_get`); the same module,
/// inputs and schedule give the same output and exit status on every run
/// and machine. Clones share one [`ScheduleLog`].
#[derive(Clone, Debug)]
pub struct Schedule {
    seed: u64,
    strategy: Strategy,
    granularity: crate::Granularity,
    log: ScheduleLog,
}

impl Schedule {
    /// A schedule with `strategy`, seeded with `seed`.
    pub fn new(seed: u64, strategy: Strategy) -> Self {
        Schedule {
            seed,
            strategy,
            granularity: crate::Granularity::Atomics,
            log: ScheduleLog::default(),
        }
    }

    /// Uniformly random choices at every point.
    pub fn random(seed: u64) -> Self {
        Self::new(seed, Strategy::Random)
    }

    /// Probabilistic concurrency testing with the default depth and length.
    pub fn pct(seed: u64) -> Self {
        Self::new(
            seed,
            Strategy::Pct {
                depth: DEFAULT_PCT_DEPTH,
                length: DEFAULT_PCT_LENGTH,
            },
        )
    }

    /// The decisions of `trace`, recorded by a run seeded with `seed` (whose
    /// `random_get` it must see again), and the default choice elsewhere.
    pub fn replay(seed: u64, trace: Trace) -> Self {
        Self::new(seed, Strategy::Replay(trace))
    }

    /// Where the scheduler may switch: [`Granularity::Atomics`](crate::Granularity::Atomics)
    /// by default. It is a property of the compiled module:
    /// [`Runner`](crate::Runner) compiles for it;
    /// an embedder passes it to [`compile_scheduled`](crate::compile_scheduled).
    pub fn granularity(mut self, granularity: crate::Granularity) -> Self {
        self.granularity = granularity;
        self
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The strategy.
    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }

    /// The granularity the module is compiled for.
    pub fn granularity_of(&self) -> crate::Granularity {
        self.granularity
    }

    /// Where the report of a run with this schedule appears when it ends.
    pub fn log(&self) -> ScheduleLog {
        self.log.clone()
    }
}

/// Who runs next at each scheduling point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// A uniformly random runnable thread.
    Random,
    /// Probabilistic concurrency testing: random thread priorities, the
    /// highest-priority runnable thread runs, and at `depth - 1` random
    /// steps among the first `length` the running thread drops to the
    /// lowest priority. Finds a bug of depth `d` in one run with
    /// probability at least 1/(threads · length^(d-1)).
    Pct {
        /// Bug depth aimed at (ordering constraints + 1).
        depth: u32,
        /// How many steps the program runs, roughly.
        length: u64,
    },
    /// Exactly the decisions of a [`Trace`].
    Replay(Trace),
}

/// One decision of a run that the default would not have taken: at step
/// `step`, thread `tid` ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Switch {
    /// The scheduling point, counted from 1.
    pub step: u64,
    /// The thread that ran from there.
    pub tid: u32,
}

/// The decisions of a run that differ from the default (the thread at a
/// point goes on; when it cannot, the lowest runnable TID runs): together
/// with the seed, all a replay needs. Written `step:tid,step:tid,...`
/// (empty for a run without a switch).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Trace {
    switches: Vec<Switch>,
}

impl Trace {
    /// A trace of these decisions, in step order.
    pub fn new(mut switches: Vec<Switch>) -> Self {
        switches.sort_unstable();
        switches.dedup_by_key(|s| s.step);
        Trace { switches }
    }

    /// The decisions, in step order.
    pub fn switches(&self) -> &[Switch] {
        &self.switches
    }

    /// How many decisions.
    pub fn len(&self) -> usize {
        self.switches.len()
    }

    /// Whether it has no decision.
    pub fn is_empty(&self) -> bool {
        self.switches.is_empty()
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.switches.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{}", s.step, s.tid)?;
        }
        Ok(())
    }
}

/// Why a trace does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParseError(String);

impl fmt::Display for TraceParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a schedule trace (`step:tid,step:tid,...`): {}",
            self.0
        )
    }
}

impl std::error::Error for TraceParseError {}

impl FromStr for Trace {
    type Err = TraceParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Trace::default());
        }
        let switches = s
            .split(',')
            .map(|item| {
                let (step, tid) = item
                    .split_once(':')
                    .ok_or_else(|| TraceParseError(format!("`{item}` has no `:`")))?;
                let step = step
                    .trim()
                    .parse()
                    .map_err(|_| TraceParseError(format!("`{step}` is not a step")))?;
                let tid = tid
                    .trim()
                    .parse()
                    .map_err(|_| TraceParseError(format!("`{tid}` is not a thread id")))?;
                Ok(Switch { step, tid })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Trace::new(switches))
    }
}

/// What a scheduled run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleReport {
    /// The decisions that differ from the default: with the seed, what a
    /// replay needs.
    pub trace: Trace,
    /// Whether `trace` holds every decision (a very long run keeps the
    /// first million; its seed still replays it).
    pub trace_complete: bool,
    /// Scheduling points passed.
    pub steps: u64,
    /// Times the turn went to another thread.
    pub switches: u64,
    /// Times it did so while the thread at the point could have gone on.
    pub preemptions: u64,
    /// Virtual time at the end, in nanoseconds.
    pub virtual_time_ns: u64,
    /// Whether the run ended because every thread was blocked for good.
    pub deadlocked: bool,
}

/// Where a scheduled run leaves its [`ScheduleReport`] when it ends. Get it
/// from [`Schedule::log`] before the run.
#[derive(Clone, Debug, Default)]
pub struct ScheduleLog {
    report: Arc<Mutex<Option<ScheduleReport>>>,
}

impl ScheduleLog {
    /// The report of the run, once it has ended.
    pub fn report(&self) -> Option<ScheduleReport> {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set(&self, report: ScheduleReport) {
        *self.report.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_reads_back_as_written() {
        let trace: Trace = "12:1, 40:0,7:3".parse().unwrap();
        assert_eq!(trace.to_string(), "7:3,12:1,40:0");
        assert_eq!(trace.to_string().parse::<Trace>().unwrap(), trace);
        assert!("".parse::<Trace>().unwrap().is_empty());
        assert!("12".parse::<Trace>().is_err());
        assert!("a:1".parse::<Trace>().is_err());
        assert!("1:-1".parse::<Trace>().is_err());
    }
}
