//! [`Scheduler`]: at most one guest thread of a program runs at a time, and
//! a [policy](super::policy) picks the next at every scheduling point.
//!
//! Every guest thread keeps its OS thread; the scheduler only decides which
//! of them may run. The one that may holds the *turn*: the others wait on
//! their own condition variable until the turn is handed to them. A thread
//! gives the turn away only at a scheduling point (an atomic instruction, a
//! WASI call, a tick of guest work, a spawn, an exit, a wait, a notify, a
//! sleep), so where threads switch, and so everything the program does, is
//! a function of the module, its inputs and the policy.
//!
//! Time is virtual: it advances by [`STEP_NS`] per point, and when no
//! thread can run but some wait with a deadline, it jumps to the earliest.
//! When no thread can run and none has a deadline, the program is
//! deadlocked: the scheduler says so once and stops handing out turns.

use super::policy::{self, Policy, SplitMix64};
use super::{Kind, Schedule, ScheduleReport, Switch, Trace};
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

/// Virtual nanoseconds per scheduling point: a program that polls a clock
/// in a loop sees it move, deterministically.
pub(crate) const STEP_NS: u64 = 1_000;
/// When every thread waits, time jumps this far past the earliest deadline.
pub(crate) const TIMER_SLACK_NS: u64 = 1_000_000;
/// At most this many decisions are kept for the trace of a run; a longer
/// run is still replayed exactly from its seed.
const MAX_TRACE: usize = 1 << 20;

/// Why a thread cannot have its turn: the program is ending (stopped, or
/// deadlocked and about to be). The caller unwinds as a stopped thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Halted;

/// How a scheduled `memory.atomic.wait` ended, as the instruction's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitResult {
    Woken = 0,
    NotEqual = 1,
    TimedOut = 2,
}

/// Called (once, outside the scheduler's lock) with the blocked threads when
/// the program deadlocks.
type OnDeadlock = Box<dyn Fn(Vec<u32>) + Send + Sync>;

pub(crate) struct Scheduler {
    seed: u64,
    state: Mutex<State>,
    on_deadlock: OnceLock<OnDeadlock>,
    /// Where the report of the run goes when it ends.
    log: super::ScheduleLog,
}

struct State {
    /// The thread that holds the turn.
    running: Option<u32>,
    threads: BTreeMap<u32, Slot>,
    /// The runnable threads at the current point, refilled at each (kept to
    /// spare an allocation per point).
    runnable: Vec<u32>,
    policy: Box<dyn Policy>,
    step: u64,
    /// Virtual monotonic time, in nanoseconds.
    now: u64,
    /// Orders the waiters of one address, oldest first.
    wait_seq: u64,
    trace: Vec<Switch>,
    trace_complete: bool,
    switches: u64,
    preemptions: u64,
    /// Points in a row the running thread has kept the turn while another
    /// could have had it.
    slice: u64,
    stopped: bool,
    deadlocked: bool,
}

struct Slot {
    status: Status,
    /// How its last wait ended, set by whoever made it runnable.
    woke: Option<WaitResult>,
    turn: Arc<Condvar>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Runnable,
    /// Waiting at `key` (a sleep has none) until notified or `deadline`.
    Blocked {
        key: Option<usize>,
        deadline: Option<u64>,
        seq: u64,
    },
}

impl Slot {
    fn new() -> Self {
        Slot {
            status: Status::Runnable,
            woke: None,
            turn: Arc::new(Condvar::new()),
        }
    }
}

impl Scheduler {
    /// A scheduler for one program run, its main thread `main` holding the
    /// turn.
    pub fn new(schedule: &Schedule, main: u32) -> Self {
        let mut rng = SplitMix64::new(schedule.seed);
        let mut policy = policy::new(&schedule.strategy, rng.fork(1));
        policy.spawned(main);
        let mut threads = BTreeMap::new();
        threads.insert(main, Slot::new());
        Scheduler {
            seed: schedule.seed,
            state: Mutex::new(State {
                running: Some(main),
                threads,
                runnable: Vec::new(),
                policy,
                step: 0,
                now: 0,
                wait_seq: 0,
                trace: Vec::new(),
                trace_complete: true,
                switches: 0,
                preemptions: 0,
                slice: 0,
                stopped: false,
                deadlocked: false,
            }),
            on_deadlock: OnceLock::new(),
            log: schedule.log.clone(),
        }
    }

    /// The schedule's seed, which also seeds the program's randomness.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// What to do when every thread is blocked for good: end the program.
    pub fn on_deadlock(&self, f: impl Fn(Vec<u32>) + Send + Sync + 'static) {
        let _ = self.on_deadlock.set(Box::new(f));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics under this lock; a poisoned state is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Thread `tid` now exists and may be scheduled; called by the thread
    /// that spawns it, which holds the turn, before the new thread can run.
    pub fn spawned(&self, tid: u32) {
        let mut s = self.lock();
        s.threads.insert(tid, Slot::new());
        s.policy.spawned(tid);
    }

    /// Thread `tid`, announced by [`spawned`](Self::spawned), will never run
    /// (its OS thread could not be started).
    pub fn forget(&self, tid: u32) {
        self.lock().threads.remove(&tid);
    }

    /// Waits for thread `tid`'s first turn; called on its own OS thread
    /// before it runs any guest code, instantiation included.
    pub fn enter(&self, tid: u32) -> Result<(), Halted> {
        let s = self.lock();
        self.wait_turn(s, tid).map(drop)
    }

    /// Thread `tid` has ended: it gives up its turn for good. Never blocks.
    pub fn exited(&self, tid: u32) {
        let mut s = self.lock();
        s.threads.remove(&tid);
        if s.running == Some(tid) && !s.stopped {
            s.running = None;
            s.step += 1;
            let deadlock = self.hand_on(&mut s, None, Kind::Exit);
            self.finish(s, deadlock);
        }
    }

    /// A scheduling point of the thread holding the turn: the policy may
    /// give the turn to another thread, and this returns when it is back.
    pub fn point(&self, kind: Kind) -> Result<(), Halted> {
        let mut s = self.lock();
        if s.stopped {
            return Err(Halted);
        }
        let Some(me) = s.running else {
            // Only a thread holding the turn runs guest code; nothing to
            // decide for anyone else.
            return Ok(());
        };
        s.step += 1;
        s.now = s.now.saturating_add(STEP_NS);
        let deadlock = self.hand_on(&mut s, Some(me), kind);
        if deadlock.is_some() {
            self.finish(s, deadlock);
            return Err(Halted);
        }
        self.wait_turn(s, me).map(drop)
    }

    /// `memory.atomic.wait` of the running thread on the cell `key`: a
    /// scheduling point, then, if `holds()` (the cell still holds the
    /// expected value, read with the turn held), blocks until a notify of
    /// `key` or `timeout_ns` of virtual time (negative: none).
    pub fn wait(
        &self,
        key: usize,
        holds: impl FnOnce() -> bool,
        timeout_ns: i64,
    ) -> Result<WaitResult, Halted> {
        self.point(Kind::Wait)?;
        if !holds() {
            return Ok(WaitResult::NotEqual);
        }
        if timeout_ns == 0 {
            return Ok(WaitResult::TimedOut);
        }
        let deadline = u64::try_from(timeout_ns).ok();
        self.block(Some(key), deadline)
    }

    /// Sleeps the running thread for `duration_ns` of virtual time.
    pub fn sleep(&self, duration_ns: u64) -> Result<(), Halted> {
        self.point(Kind::Sleep)?;
        if duration_ns == 0 {
            return Ok(());
        }
        self.block(None, Some(duration_ns)).map(drop)
    }

    /// Blocks the running thread at `key` for at most `timeout` virtual
    /// nanoseconds from now, handing the turn on.
    fn block(&self, key: Option<usize>, timeout: Option<u64>) -> Result<WaitResult, Halted> {
        let mut s = self.lock();
        if s.stopped {
            return Err(Halted);
        }
        let Some(me) = s.running else {
            return Err(Halted);
        };
        let deadline = timeout.map(|t| s.now.saturating_add(t));
        s.wait_seq += 1;
        let seq = s.wait_seq;
        if let Some(slot) = s.threads.get_mut(&me) {
            slot.status = Status::Blocked { key, deadline, seq };
            slot.woke = None;
        }
        s.step += 1;
        let deadlock = self.hand_on(&mut s, None, Kind::Wait);
        if deadlock.is_some() {
            self.finish(s, deadlock);
            return Err(Halted);
        }
        let mut s = self.wait_turn(s, me)?;
        let woke = s.threads.get_mut(&me).and_then(|slot| slot.woke.take());
        Ok(woke.unwrap_or(WaitResult::Woken))
    }

    /// Makes up to `count` threads waiting at `key` runnable, oldest first;
    /// how many. Not a scheduling point by itself (an embedder's
    /// [`Notifier`](crate::Notifier) calls it from outside the program).
    pub fn notify(&self, key: usize, count: u32) -> u32 {
        let mut s = self.lock();
        let mut waiters: Vec<(u64, u32)> = s
            .threads
            .iter()
            .filter_map(|(&tid, slot)| match slot.status {
                Status::Blocked {
                    key: Some(k), seq, ..
                } if k == key => Some((seq, tid)),
                _ => None,
            })
            .collect();
        waiters.sort_unstable();
        let mut woken = 0;
        for (_, tid) in waiters.into_iter().take(count as usize) {
            if let Some(slot) = s.threads.get_mut(&tid) {
                slot.status = Status::Runnable;
                slot.woke = Some(WaitResult::Woken);
                woken += 1;
            }
        }
        woken
    }

    /// The virtual monotonic time, in nanoseconds since the program began.
    pub fn now_ns(&self) -> u64 {
        self.lock().now
    }

    /// The program is ending: no thread gets a turn any more, and every
    /// thread waiting for one unwinds.
    pub fn stop(&self) {
        let mut s = self.lock();
        if s.stopped {
            return;
        }
        s.stopped = true;
        for slot in s.threads.values() {
            slot.turn.notify_one();
        }
        let report = ScheduleReport {
            trace: Trace::new(std::mem::take(&mut s.trace)),
            trace_complete: s.trace_complete,
            steps: s.step,
            switches: s.switches,
            preemptions: s.preemptions,
            virtual_time_ns: s.now,
            deadlocked: s.deadlocked,
        };
        drop(s);
        log::debug!(
            "schedule: {} points, {} switches ({} preemptions), {} forced decisions, {} ms of \
             virtual time{}",
            report.steps,
            report.switches,
            report.preemptions,
            report.trace.len(),
            report.virtual_time_ns / 1_000_000,
            if report.deadlocked {
                ", deadlocked"
            } else {
                ""
            }
        );
        self.log.set(report);
    }

    /// Picks the thread that runs next and gives it the turn. `current` is
    /// the thread at the point if it can go on. Returns the blocked threads
    /// if none can run, ever: a deadlock.
    fn hand_on(&self, s: &mut State, current: Option<u32>, kind: Kind) -> Option<Vec<u32>> {
        s.refill_runnable();
        if s.runnable.is_empty() {
            // Nobody can run: the earliest deadline is what happens next.
            let next = s
                .threads
                .values()
                .filter_map(|slot| match slot.status {
                    Status::Blocked { deadline, .. } => deadline,
                    Status::Runnable => None,
                })
                .min();
            match next {
                Some(deadline) => {
                    // Late by the slack, as a loaded machine's timers are:
                    // sleepers due within it of each other wake together,
                    // and the policy interleaves them.
                    s.now = s.now.max(deadline.saturating_add(TIMER_SLACK_NS));
                    s.refill_runnable();
                }
                None => {
                    s.running = None;
                    if s.threads.is_empty() || s.stopped {
                        return None;
                    }
                    s.deadlocked = true;
                    return Some(s.threads.keys().copied().collect());
                }
            }
        }
        let step = s.step;
        let state = &mut *s;
        let runnable = &state.runnable;
        let default = policy::default_choice(current, runnable, kind, state.slice);
        let chosen = state.policy.choose(step, current, runnable, kind, default);
        let chosen = if runnable.contains(&chosen) {
            chosen
        } else {
            default
        };
        if chosen != default {
            if s.trace.len() < MAX_TRACE {
                s.trace.push(Switch { step, tid: chosen });
            } else {
                s.trace_complete = false;
            }
        }
        if current.is_some_and(|c| c != chosen) {
            s.preemptions += 1;
        }
        s.slice = if current == Some(chosen) && s.runnable.len() > 1 {
            s.slice + 1
        } else {
            0
        };
        if s.running != Some(chosen) {
            s.switches += 1;
        }
        s.running = Some(chosen);
        if let Some(slot) = s.threads.get(&chosen) {
            slot.turn.notify_one();
        }
        None
    }

    /// Releases the lock, and reports a deadlock if there is one.
    fn finish(&self, s: MutexGuard<'_, State>, deadlock: Option<Vec<u32>>) {
        drop(s);
        if let Some(blocked) = deadlock {
            log::debug!("schedule: deadlock, every thread blocked: {blocked:?}");
            if let Some(f) = self.on_deadlock.get() {
                f(blocked);
            }
        }
    }

    /// Waits until `me` holds the turn.
    fn wait_turn<'a>(
        &self,
        mut s: MutexGuard<'a, State>,
        me: u32,
    ) -> Result<MutexGuard<'a, State>, Halted> {
        let Some(turn) = s.threads.get(&me).map(|slot| slot.turn.clone()) else {
            return Err(Halted);
        };
        loop {
            if s.stopped {
                return Err(Halted);
            }
            if s.running == Some(me) {
                return Ok(s);
            }
            s = turn.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl State {
    /// Finds the runnable threads, in TID order, after waking every waiter
    /// whose deadline has passed.
    fn refill_runnable(&mut self) {
        let now = self.now;
        let runnable = &mut self.runnable;
        runnable.clear();
        for (&tid, slot) in self.threads.iter_mut() {
            if let Status::Blocked {
                deadline: Some(d), ..
            } = slot.status
                && d <= now
            {
                slot.status = Status::Runnable;
                slot.woke = Some(WaitResult::TimedOut);
            }
            if slot.status == Status::Runnable {
                runnable.push(tid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Strategy;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Two threads, each taking `n` turns appending its TID: the order is a
    /// function of the seed alone.
    fn interleaving(schedule: Schedule, n: usize) -> (Vec<u32>, ScheduleReport) {
        let scheduler = Arc::new(Scheduler::new(&schedule, 0));
        let order = Arc::new(Mutex::new(Vec::new()));
        scheduler.spawned(1);
        let worker = {
            let (scheduler, order) = (scheduler.clone(), order.clone());
            std::thread::spawn(move || {
                scheduler.enter(1).expect("a turn");
                for _ in 0..n {
                    order.lock().unwrap().push(1);
                    scheduler.point(Kind::Atomic).expect("a turn");
                }
                scheduler.exited(1);
            })
        };
        for _ in 0..n {
            order.lock().unwrap().push(0);
            scheduler.point(Kind::Atomic).expect("a turn");
        }
        // Wait for the worker as a guest would: spin on points.
        while scheduler.lock().threads.contains_key(&1) {
            scheduler.point(Kind::Atomic).expect("a turn");
        }
        worker.join().unwrap();
        scheduler.stop();
        let report = schedule.log.report().expect("a report");
        let order = order.lock().unwrap().clone();
        (order, report)
    }

    #[test]
    fn a_seed_decides_the_interleaving_and_a_trace_replays_it() {
        let (a, report) = interleaving(Schedule::random(42), 50);
        let (b, _) = interleaving(Schedule::random(42), 50);
        assert_eq!(a, b);
        assert!(report.preemptions > 0, "{report:?}");
        let (c, _) = interleaving(Schedule::random(43), 50);
        assert_ne!(a, c, "two seeds, one interleaving of 100 steps");
        let (d, _) = interleaving(Schedule::replay(42, report.trace.clone()), 50);
        assert_eq!(a, d);
    }

    #[test]
    fn every_thread_waiting_without_a_deadline_is_a_deadlock() {
        let schedule = Schedule::random(1);
        let scheduler = Arc::new(Scheduler::new(&schedule, 0));
        let seen = Arc::new(AtomicU32::new(0));
        let s = seen.clone();
        scheduler.on_deadlock(move |blocked| s.store(blocked.len() as u32, Ordering::SeqCst));
        assert_eq!(scheduler.wait(8, || true, -1), Err(Halted));
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_timed_wait_alone_jumps_virtual_time_to_its_deadline() {
        let schedule = Schedule::random(1);
        let scheduler = Scheduler::new(&schedule, 0);
        let before = scheduler.now_ns();
        let second = 1_000_000_000;
        assert_eq!(scheduler.wait(8, || true, second), Ok(WaitResult::TimedOut));
        assert!(scheduler.now_ns() >= before + second as u64);
        assert_eq!(scheduler.wait(8, || false, -1), Ok(WaitResult::NotEqual));
    }

    #[test]
    fn a_notify_wakes_the_oldest_waiter() {
        let schedule = Schedule::new(7, Strategy::Random);
        let scheduler = Arc::new(Scheduler::new(&schedule, 0));
        scheduler.spawned(1);
        let worker = {
            let scheduler = scheduler.clone();
            std::thread::spawn(move || {
                scheduler.enter(1).expect("a turn");
                let woke = scheduler.wait(16, || true, -1);
                scheduler.exited(1);
                woke
            })
        };
        // Until the worker waits, notifying finds nobody.
        while scheduler.notify(16, 1) == 0 {
            scheduler.point(Kind::Atomic).expect("a turn");
        }
        while scheduler.lock().threads.contains_key(&1) {
            scheduler.point(Kind::Atomic).expect("a turn");
        }
        assert_eq!(worker.join().unwrap(), Ok(WaitResult::Woken));
    }

    #[test]
    fn stop_sends_every_thread_waiting_for_a_turn_away() {
        let schedule = Schedule::random(3);
        let scheduler = Arc::new(Scheduler::new(&schedule, 0));
        scheduler.spawned(1);
        let worker = {
            let scheduler = scheduler.clone();
            std::thread::spawn(move || scheduler.enter(1))
        };
        scheduler.stop();
        assert_eq!(worker.join().unwrap(), Err(Halted));
        assert_eq!(scheduler.point(Kind::Atomic), Err(Halted));
    }
}
