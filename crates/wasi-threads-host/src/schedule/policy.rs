//! Which thread runs next: the policies of a scheduled run. A policy sees
//! only scheduling points (a step number, the thread that reached the point
//! and the threads that could run) and answers with one of them; it never
//! sees time, addresses or anything else that could differ between two runs
//! of one program, so a run is a function of the module, its inputs and the
//! policy's seed.

use super::{Kind, Strategy, Trace};
use std::collections::{BTreeMap, HashMap};

/// A small, seeded generator (SplitMix64). Ours rather than a library's: a
/// printed seed must replay the same run with every later version of this
/// crate, and a library may change what its generators produce.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; `n` must not be 0.
    pub fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift: unbiased enough for scheduling, and
        // the same on every machine.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A generator for another purpose, independent of this one.
    pub fn fork(&mut self, salt: u64) -> SplitMix64 {
        SplitMix64(self.next_u64() ^ salt.wrapping_mul(0xD605_0BE4_6A6C_B2F3))
    }
}

/// Decides which runnable thread runs at each scheduling point.
pub(crate) trait Policy: Send {
    /// `runnable` is sorted and not empty; `current` is the thread that
    /// reached the point if it can go on (it is then in `runnable`);
    /// `default` is what [`default_choice`] says. The answer must be one of
    /// `runnable`.
    fn choose(
        &mut self,
        step: u64,
        current: Option<u32>,
        runnable: &[u32],
        kind: Kind,
        default: u32,
    ) -> u32;

    /// Thread `tid` now exists.
    fn spawned(&mut self, _tid: u32) {}
}

/// The policy a [`Strategy`] describes, its randomness drawn from `rng`.
pub(crate) fn new(strategy: &Strategy, rng: SplitMix64) -> Box<dyn Policy> {
    match strategy {
        Strategy::Random => Box::new(Random { rng }),
        Strategy::Pct { depth, length } => Box::new(Pct::new(rng, *depth, *length)),
        Strategy::Replay(trace) => Box::new(Replay::new(trace)),
    }
}

/// How many points in a row a thread keeps the turn by default while
/// another could run; then the next runs, as after an OS time slice.
pub(crate) const DEFAULT_SLICE: u64 = 1_000;

/// What runs when no decision says otherwise: the thread that reached the
/// point goes on, unless it yields or has had the turn for
/// [`DEFAULT_SLICE`] points while others waited (then the next runnable TID
/// after it runs, wrapping); when it cannot go on, the lowest runnable TID.
/// A [`Trace`] records only the decisions that differ from this. That a
/// spinning thread gives way by default keeps a replay, and every trace
/// shrinking tries, from livelocking a program whose threads spin.
pub(crate) fn default_choice(
    current: Option<u32>,
    runnable: &[u32],
    kind: Kind,
    slice: u64,
) -> u32 {
    match current {
        Some(tid) if runnable.len() > 1 && (kind == Kind::Yield || slice >= DEFAULT_SLICE) => {
            runnable
                .iter()
                .copied()
                .find(|&t| t > tid)
                .unwrap_or(runnable[0])
        }
        Some(tid) => tid,
        None => runnable[0],
    }
}

/// Uniformly random among the runnable threads at every point.
struct Random {
    rng: SplitMix64,
}

impl Policy for Random {
    fn choose(&mut self, _: u64, _: Option<u32>, runnable: &[u32], _: Kind, _: u32) -> u32 {
        runnable[self.rng.below(runnable.len() as u64) as usize]
    }
}

/// Probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010): every
/// thread gets a random priority and the highest-priority runnable thread
/// always runs; at `depth - 1` steps chosen at random among the first
/// `length`, the running thread drops below every other. A bug that needs
/// `d` ordering constraints between threads is found by one run with
/// probability at least 1/(n·length^(d-1)).
struct Pct {
    rng: SplitMix64,
    priorities: HashMap<u32, u64>,
    /// Step → the (low) priority the running thread drops to there.
    change_points: BTreeMap<u64, u64>,
    /// The lowest priority so far: demotions go below it.
    floor: u64,
    /// How many points in a row the running thread has kept running while
    /// others could have run.
    streak: u64,
}

/// At most this many priority change points (a depth of 1 + this).
const MAX_PCT_CHANGES: u64 = 1024;
/// Priorities given at spawn are above this; those of demoted threads
/// below.
const PCT_BASE: u64 = 1 << 62;
/// A thread that has run this many points in a row while another was
/// runnable is demoted: strict priorities would otherwise let a thread that
/// spins, waiting for a lower-priority one, spin forever.
const PCT_STREAK_LIMIT: u64 = 20_000;

impl Pct {
    fn new(mut rng: SplitMix64, depth: u32, length: u64) -> Self {
        let mut change_points = BTreeMap::new();
        // Bounded: the depth is the user's to choose, and a depth beyond a
        // few dozen is no longer PCT but random switching.
        let changes = u64::from(depth.saturating_sub(1)).min(MAX_PCT_CHANGES);
        for i in 0..changes {
            let step = 1 + rng.below(length.max(1));
            // Later change points drop the thread lower still.
            change_points.insert(step, PCT_BASE - 1 - changes + i);
        }
        Pct {
            rng,
            priorities: HashMap::new(),
            change_points,
            floor: PCT_BASE - 1 - changes,
            streak: 0,
        }
    }

    fn priority(&self, tid: u32) -> u64 {
        self.priorities.get(&tid).copied().unwrap_or(PCT_BASE)
    }

    fn demote(&mut self, tid: u32) {
        self.floor = self.floor.saturating_sub(1);
        self.priorities.insert(tid, self.floor);
    }
}

impl Policy for Pct {
    fn spawned(&mut self, tid: u32) {
        let priority = PCT_BASE + 1 + (self.rng.next_u64() >> 2);
        self.priorities.insert(tid, priority);
    }

    fn choose(
        &mut self,
        step: u64,
        current: Option<u32>,
        runnable: &[u32],
        kind: Kind,
        _: u32,
    ) -> u32 {
        if let Some(tid) = current {
            if let Some(low) = self.change_points.remove(&step) {
                self.priorities.insert(tid, low);
            } else if kind == Kind::Yield && runnable.len() > 1 {
                // A thread that yields is waiting for another: let it run.
                self.demote(tid);
            } else if runnable.len() > 1 && self.streak >= PCT_STREAK_LIMIT {
                self.demote(tid);
            }
        }
        // Ties (two threads never spawned, say the main thread) go to the
        // lower TID.
        let chosen = runnable
            .iter()
            .copied()
            .max_by_key(|&tid| (self.priority(tid), std::cmp::Reverse(tid)))
            .unwrap_or(runnable[0]);
        if Some(chosen) == current && runnable.len() > 1 {
            self.streak += 1;
        } else {
            self.streak = 0;
        }
        chosen
    }
}

/// The decisions of a [`Trace`], and the default everywhere else.
struct Replay {
    switches: HashMap<u64, u32>,
}

impl Replay {
    fn new(trace: &Trace) -> Self {
        Replay {
            switches: trace.switches().iter().map(|s| (s.step, s.tid)).collect(),
        }
    }
}

impl Policy for Replay {
    fn choose(
        &mut self,
        step: u64,
        _: Option<u32>,
        runnable: &[u32],
        _: Kind,
        default: u32,
    ) -> u32 {
        match self.switches.get(&step) {
            Some(tid) if runnable.contains(tid) => *tid,
            _ => default,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_mix_is_the_reference_sequence() {
        // The first outputs of SplitMix64 seeded with 0 (Vigna's reference).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn below_stays_below() {
        let mut rng = SplitMix64::new(7);
        for n in 1..50 {
            assert!(rng.below(n) < n);
        }
    }

    #[test]
    fn pct_runs_the_highest_priority_and_drops_it_at_a_change_point() {
        let mut pct = Pct::new(SplitMix64::new(1), 2, 10);
        pct.spawned(1);
        pct.spawned(2);
        let first = pct.choose(100, None, &[1, 2], Kind::Atomic, 1);
        let other = if first == 1 { 2 } else { 1 };
        assert_eq!(
            pct.choose(101, Some(first), &[1, 2], Kind::Atomic, first),
            first
        );
        let (&step, _) = pct.change_points.iter().next().expect("one change point");
        assert_eq!(
            pct.choose(step, Some(first), &[1, 2], Kind::Atomic, first),
            other
        );
    }

    #[test]
    fn an_absurd_depth_is_bounded() {
        let pct = Pct::new(SplitMix64::new(1), u32::MAX, u64::MAX);
        assert!(pct.change_points.len() as u64 <= MAX_PCT_CHANGES);
    }

    #[test]
    fn replay_follows_its_trace_and_defaults_elsewhere() {
        let trace: Trace = "3:2,5:1".parse().expect("a trace");
        let mut replay = Replay::new(&trace);
        assert_eq!(replay.choose(1, Some(1), &[1, 2], Kind::Atomic, 1), 1);
        assert_eq!(replay.choose(3, Some(1), &[1, 2], Kind::Atomic, 1), 2);
        assert_eq!(replay.choose(4, None, &[1, 2], Kind::Exit, 1), 1);
        // A thread the trace names that cannot run: the default.
        assert_eq!(replay.choose(5, Some(2), &[2], Kind::Atomic, 2), 2);
    }

    #[test]
    fn by_default_a_thread_goes_on_until_it_yields_or_its_slice_ends() {
        let runnable = [0, 2, 5];
        assert_eq!(default_choice(Some(2), &runnable, Kind::Atomic, 0), 2);
        assert_eq!(default_choice(Some(2), &runnable, Kind::Yield, 0), 5);
        assert_eq!(default_choice(Some(5), &runnable, Kind::Yield, 0), 0);
        assert_eq!(
            default_choice(Some(2), &runnable, Kind::Tick, DEFAULT_SLICE),
            5
        );
        assert_eq!(default_choice(Some(2), &[2], Kind::Yield, DEFAULT_SLICE), 2);
        assert_eq!(default_choice(None, &runnable, Kind::Exit, 0), 0);
    }
}
