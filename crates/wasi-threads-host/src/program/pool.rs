//! OS threads for guest threads, reused.
//!
//! Creating an OS thread (an 8 MiB stack mapping, `clone`, Wasmtime's
//! per-thread signal stack) costs more than creating the guest thread's
//! `Store` and instance. A worker whose guest thread has returned therefore
//! waits a while (the keep-alive) for the next `thread-spawn` instead of
//! exiting; every guest thread still gets a fresh `Store` and instance.
//!
//! A worker that leaves after its keep-alive is joined as it leaves (by the
//! next worker to leave, the next spawn, or the shutdown, whichever comes
//! first), so a long-lived program that spawns with idle gaps keeps a flat
//! number of OS threads and mappings. When the program ends the pool is shut
//! down and every worker joined.

use crate::sync::{AtomicUsize, Ordering};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Work for a worker: a guest thread to run, and the name it runs under.
pub(crate) struct Job {
    pub name: String,
    pub run: Box<dyn FnOnce(&Finishing<'_>) + Send>,
}

/// The pool's count of workers that are waiting for a job (or about to) and
/// that no spawn has claimed. The whole hand-off protocol is in these three
/// operations, model-checked in `tests/lifecycle_model.rs`:
///
/// - a worker whose guest thread is done [`announce`](Self::announce)s itself;
/// - a spawn [`claim`](Self::claim)s one, and then *must* send its job to the
///   shared queue, where some announced worker will take it;
/// - a worker whose keep-alive expired may leave only if it can
///   [`try_leave`](Self::try_leave) (take back an unclaimed announcement);
///   otherwise a claimed job is on its way and it must wait for it.
#[derive(Debug, Default)]
pub struct IdleCount {
    n: AtomicUsize,
}

impl IdleCount {
    /// A count of zero.
    pub fn new() -> Self {
        IdleCount {
            n: AtomicUsize::new(0),
        }
    }

    /// A worker becomes available.
    pub fn announce(&self) {
        self.n.fetch_add(1, Ordering::SeqCst);
    }

    /// A spawn counts on an available worker; `false` if there is none.
    pub fn claim(&self) -> bool {
        self.take_one()
    }

    /// A worker whose keep-alive expired takes back its announcement; `false`
    /// if every announcement is claimed (a job is on its way).
    pub fn try_leave(&self) -> bool {
        self.take_one()
    }

    /// Gives back a claim whose job was never sent.
    pub fn unclaim(&self) {
        self.announce();
    }

    fn take_one(&self) -> bool {
        self.n
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    #[cfg(test)]
    fn get(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }
}

/// Lets a job announce that its guest code is done, so that its worker
/// counts as available for the next spawn while it still tears the store
/// down.
pub(crate) struct Finishing<'a> {
    idle: &'a IdleCount,
    announced: Cell<bool>,
}

impl Finishing<'_> {
    /// The guest thread has returned; only cleanup remains.
    pub fn now(&self) {
        if !self.announced.replace(true) {
            self.idle.announce();
        }
    }
}

/// The OS threads of the pool, so that they can be joined.
#[derive(Default)]
struct Workers {
    next_id: u64,
    running: HashMap<u64, JoinHandle<()>>,
    /// Workers that have left (or are leaving: returning from their main
    /// function is all they still do), not yet joined.
    left: Vec<JoinHandle<()>>,
}

pub(crate) struct WorkerPool {
    sender: Mutex<Option<Sender<Job>>>,
    receiver: Receiver<Job>,
    idle: Arc<IdleCount>,
    workers: Arc<Mutex<Workers>>,
    stack_size: usize,
    keep_alive: Duration,
}

/// A worker reserved for one job: an idle one that a spawn has claimed, or a
/// new OS thread waiting for its first job. Reserving can fail (the OS
/// refuses a thread); handing the job over then cannot, except after
/// shutdown.
pub(crate) enum Slot<'a> {
    Idle(&'a WorkerPool, Cell<bool>),
    Fresh(Sender<Job>),
}

impl Slot<'_> {
    /// Hands `job` to the reserved worker; gives it back if the pool is shut
    /// down.
    pub(crate) fn run(self, job: Job) -> Result<(), Job> {
        match &self {
            Slot::Idle(pool, sent) => {
                sent.set(true);
                match &*pool.sender.lock() {
                    // A claimed worker is receiving (or about to): it takes this.
                    Some(sender) => sender.send(job).map_err(|e| e.into_inner()),
                    None => Err(job),
                }
            }
            Slot::Fresh(first) => first.send(job).map_err(|e| e.into_inner()),
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Slot::Idle(pool, sent) = self
            && !sent.get()
        {
            pool.idle.unclaim();
        }
    }
}

impl WorkerPool {
    pub(crate) fn new(stack_size: usize, keep_alive: Duration) -> Self {
        let (sender, receiver) = crossbeam_channel::unbounded();
        WorkerPool {
            sender: Mutex::new(Some(sender)),
            receiver,
            idle: Arc::new(IdleCount::new()),
            workers: Arc::new(Mutex::new(Workers::default())),
            stack_size,
            keep_alive,
        }
    }

    /// Reserves a worker for a job named `name`: an idle one, or a new OS
    /// thread if none is idle.
    pub(crate) fn reserve(&self, name: &str) -> std::io::Result<Slot<'_>> {
        if self.idle.claim() {
            return Ok(Slot::Idle(self, Cell::new(false)));
        }
        reap(&self.workers);
        let (first_tx, first_rx) = crossbeam_channel::bounded(1);
        let receiver = self.receiver.clone();
        let idle = self.idle.clone();
        let keep_alive = self.keep_alive;
        let registry = self.workers.clone();
        // Registered under the lock, so that a worker that leaves at once
        // still finds its own handle.
        let mut workers = self.workers.lock();
        let id = workers.next_id;
        workers.next_id += 1;
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .stack_size(self.stack_size)
            .spawn(move || {
                if let Ok(job) = first_rx.recv() {
                    worker(job, receiver, &idle, keep_alive);
                }
                leave(&registry, id);
            })?;
        workers.running.insert(id, handle);
        Ok(Slot::Fresh(first_tx))
    }

    /// Lets every worker finish and joins them, waiting at most until
    /// `deadline`; returns how many could not be joined in time (they are
    /// detached).
    pub(crate) fn shutdown(&self, deadline: Instant) -> usize {
        // Workers see the channel disconnect once their queue is drained.
        drop(self.sender.lock().take());
        let handles: Vec<JoinHandle<()>> = {
            let mut workers = self.workers.lock();
            let left = std::mem::take(&mut workers.left);
            left.into_iter()
                .chain(workers.running.drain().map(|(_, h)| h))
                .collect()
        };
        let mut detached = 0;
        for handle in handles {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                detached += 1;
            }
        }
        detached
    }
}

/// The last thing a worker does: moves its own handle to `left` and joins
/// the workers that left before it (they only had to return).
fn leave(workers: &Mutex<Workers>, id: u64) {
    let earlier = {
        let mut workers = workers.lock();
        let earlier = std::mem::take(&mut workers.left);
        if let Some(me) = workers.running.remove(&id) {
            workers.left.push(me);
        }
        earlier
    };
    for handle in earlier {
        let _ = handle.join();
    }
}

/// Joins the workers that have left.
fn reap(workers: &Mutex<Workers>) {
    let left = std::mem::take(&mut workers.lock().left);
    for handle in left {
        let _ = handle.join();
    }
}

fn worker(first: Job, jobs: Receiver<Job>, idle: &IdleCount, keep_alive: Duration) {
    let mut job = first;
    let mut named = true;
    loop {
        if !named {
            set_thread_name(&job.name);
        }
        let finishing = Finishing {
            idle,
            announced: Cell::new(false),
        };
        (job.run)(&finishing);
        finishing.now();
        named = false;
        job = match jobs.recv_timeout(keep_alive) {
            Ok(job) => job,
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                // Leave only if no spawn has counted on this worker; if one
                // has, its job is on the way.
                if idle.try_leave() {
                    return;
                }
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            }
        };
    }
}

/// Renames the calling OS thread (as `ps`, `top` and debuggers show it) after
/// the guest thread it now runs.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_thread_name(name: &str) {
    // The kernel keeps 15 bytes and a NUL.
    let mut buf = [0u8; 16];
    let len = name.len().min(15);
    buf[..len].copy_from_slice(&name.as_bytes()[..len]);
    // SAFETY: `buf` is a NUL-terminated string that outlives the call, and
    // PR_SET_NAME only reads it; it names the calling thread alone.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}

/// Elsewhere a reused thread keeps the name it was created with (the first
/// guest thread's): renaming a running thread has no portable API.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_thread_name(_name: &str) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::atomic::Ordering;

    fn job(counter: &Arc<AtomicU32>) -> Job {
        let counter = counter.clone();
        Job {
            name: "test-job".into(),
            run: Box::new(move |finishing| {
                counter.fetch_add(1, Ordering::SeqCst);
                finishing.now();
            }),
        }
    }

    fn execute(pool: &WorkerPool, job: Job) {
        assert!(pool.reserve(&job.name.clone()).unwrap().run(job).is_ok());
    }

    fn threads_ever(pool: &WorkerPool) -> u64 {
        pool.workers.lock().next_id
    }

    #[test]
    fn sequential_jobs_reuse_one_worker() {
        let pool = WorkerPool::new(1 << 20, Duration::from_secs(5));
        let counter = Arc::new(AtomicU32::new(0));
        for _ in 0..50 {
            execute(&pool, job(&counter));
            // Wait until the worker is idle again.
            while pool.idle.get() == 0 {
                std::thread::yield_now();
            }
        }
        assert_eq!(threads_ever(&pool), 1);
        assert_eq!(pool.shutdown(Instant::now() + Duration::from_secs(5)), 0);
        assert_eq!(counter.load(Ordering::SeqCst), 50);
    }

    #[test]
    fn idle_workers_leave_after_keep_alive_and_are_joined() {
        let pool = WorkerPool::new(1 << 20, Duration::from_millis(10));
        let counter = Arc::new(AtomicU32::new(0));
        for _ in 0..4 {
            execute(&pool, job(&counter));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pool.workers.lock().running.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let workers = pool.workers.lock();
        assert!(workers.running.is_empty());
        // All but the last to leave were joined by the ones after them.
        assert!(workers.left.len() <= 1, "{}", workers.left.len());
        drop(workers);
        assert_eq!(pool.idle.get(), 0);
        // A spawn after they left starts a new worker, joins the last
        // leaver, and still runs.
        execute(&pool, job(&counter));
        assert!(pool.workers.lock().left.is_empty());
        assert_eq!(pool.shutdown(Instant::now() + Duration::from_secs(5)), 0);
        assert_eq!(counter.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn an_unused_reservation_is_given_back() {
        let pool = WorkerPool::new(1 << 20, Duration::from_secs(5));
        let counter = Arc::new(AtomicU32::new(0));
        execute(&pool, job(&counter));
        while pool.idle.get() == 0 {
            std::thread::yield_now();
        }
        drop(pool.reserve("unused").unwrap());
        assert_eq!(pool.idle.get(), 1);
        // A fresh worker whose slot is dropped leaves without a job.
        pool.idle.claim();
        drop(pool.reserve("unused").unwrap());
        pool.idle.unclaim();
        assert_eq!(pool.shutdown(Instant::now() + Duration::from_secs(5)), 0);
        assert_eq!(counter.load(Ordering::SeqCst), 1);
    }
}
