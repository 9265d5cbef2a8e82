//! OS threads for guest threads, reused.
//!
//! Creating an OS thread (an 8 MiB stack mapping, `clone`, Wasmtime's
//! per-thread signal stack) costs more than creating the guest thread's
//! `Store` and instance. A worker whose guest thread has returned therefore
//! waits a while for the next `thread-spawn` instead of exiting; every guest
//! thread still gets a fresh `Store` and instance. When the program ends the
//! supervisor shuts the pool down and joins every worker.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Work for a worker: a guest thread to run, and the name it runs under.
pub(crate) struct Job {
    pub name: String,
    pub run: Box<dyn FnOnce(&Finishing<'_>) + Send>,
}

/// Lets a job announce that its guest code is done, so that its worker
/// counts as available for the next spawn while it still tears the store
/// down.
pub(crate) struct Finishing<'a> {
    idle: &'a AtomicUsize,
    announced: Cell<bool>,
}

impl Finishing<'_> {
    /// The guest thread has returned; only cleanup remains.
    pub fn now(&self) {
        if !self.announced.replace(true) {
            self.idle.fetch_add(1, Ordering::SeqCst);
        }
    }
}

pub(crate) struct WorkerPool {
    sender: Mutex<Option<Sender<Job>>>,
    receiver: Receiver<Job>,
    /// Workers waiting for a job (or about to) that no spawn has claimed.
    idle: Arc<AtomicUsize>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    stack_size: usize,
    keep_alive: Duration,
}

impl WorkerPool {
    pub(crate) fn new(stack_size: usize, keep_alive: Duration) -> Self {
        let (sender, receiver) = crossbeam_channel::unbounded();
        WorkerPool {
            sender: Mutex::new(Some(sender)),
            receiver,
            idle: Arc::new(AtomicUsize::new(0)),
            workers: Mutex::new(Vec::new()),
            stack_size,
            keep_alive,
        }
    }

    /// Runs `job` on an idle worker, or on a new OS thread if none is idle.
    pub(crate) fn execute(&self, job: Job) -> std::io::Result<()> {
        let claimed = self
            .idle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if claimed {
            if let Some(sender) = &*self.sender.lock() {
                // A claimed worker is receiving (or about to): it takes this.
                return sender
                    .send(job)
                    .map_err(|_| std::io::Error::other("worker pool is shut down"));
            }
            return Err(std::io::Error::other("worker pool is shut down"));
        }
        let receiver = self.receiver.clone();
        let idle = self.idle.clone();
        let keep_alive = self.keep_alive;
        let handle = std::thread::Builder::new()
            .name(job.name.clone())
            .stack_size(self.stack_size)
            .spawn(move || worker(job, receiver, idle, keep_alive))?;
        self.workers.lock().push(handle);
        Ok(())
    }

    /// Lets every worker finish and joins them, waiting at most until
    /// `deadline`; returns how many could not be joined in time.
    pub(crate) fn shutdown(&self, deadline: Instant) -> usize {
        // Workers see the channel disconnect once their queue is drained.
        drop(self.sender.lock().take());
        let workers = std::mem::take(&mut *self.workers.lock());
        let mut detached = 0;
        for handle in workers {
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

fn worker(first: Job, jobs: Receiver<Job>, idle: Arc<AtomicUsize>, keep_alive: Duration) {
    let mut job = first;
    let mut named = true;
    loop {
        if !named {
            set_thread_name(&job.name);
        }
        let finishing = Finishing {
            idle: &idle,
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
                if idle
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
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

/// Names the calling OS thread (as `ps`, `top` and debuggers show it).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

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

    #[test]
    fn sequential_jobs_reuse_one_worker() {
        let pool = WorkerPool::new(1 << 20, Duration::from_secs(5));
        let counter = Arc::new(AtomicU32::new(0));
        for _ in 0..50 {
            pool.execute(job(&counter)).unwrap();
            // Wait until the worker is idle again.
            while pool.idle.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
        }
        assert_eq!(pool.workers.lock().len(), 1);
        assert_eq!(pool.shutdown(Instant::now() + Duration::from_secs(5)), 0);
        assert_eq!(counter.load(Ordering::SeqCst), 50);
    }

    #[test]
    fn idle_workers_leave_after_keep_alive() {
        let pool = WorkerPool::new(1 << 20, Duration::from_millis(10));
        let counter = Arc::new(AtomicU32::new(0));
        for _ in 0..4 {
            pool.execute(job(&counter)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(pool.workers.lock().iter().all(|h| h.is_finished()));
        assert_eq!(pool.idle.load(Ordering::SeqCst), 0);
        // A spawn after they left starts a new worker and still runs.
        pool.execute(job(&counter)).unwrap();
        assert_eq!(pool.shutdown(Instant::now() + Duration::from_secs(5)), 0);
        assert_eq!(counter.load(Ordering::SeqCst), 5);
    }
}
