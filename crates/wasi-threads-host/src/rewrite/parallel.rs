//! The rewrite of a large module on every core: the scan and the emission
//! of function bodies are each one body at a time, so they split into runs
//! of bodies that threads take in turn, and the results are put back in the
//! module's order. A first run of a large module is otherwise one core
//! rewriting while the others wait for Cranelift (which compiles in
//! parallel itself).
//!
//! Small modules (every test's, most programs') are done on the calling
//! thread: below [`MIN_PARALLEL`] bytes of code, starting threads costs more
//! than it saves. Without the `parallel-compilation` feature (an embedder
//! who wants no threads of ours) everything is done on the calling thread.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of function bodies below which the rewrite stays on one thread.
pub const MIN_PARALLEL: usize = 256 << 10;

/// Runs of bodies per thread: enough that one slow run does not leave the
/// other threads idle at the end.
const RUNS_PER_THREAD: usize = 8;

/// `f(i, item)` for every item of `items`, in order; on several threads when
/// the items weigh (`weight`, in bytes of code) at least [`MIN_PARALLEL`].
pub fn map<T: Sync, R: Send>(
    items: &[T],
    weight: impl Fn(&T) -> usize,
    f: impl Fn(usize, &T) -> R + Sync,
) -> Vec<R> {
    let total: usize = items.iter().map(&weight).sum();
    let threads = match () {
        #[cfg(test)]
        () if FORCE_THREADS.get().is_some() => FORCE_THREADS.get().unwrap_or(1),
        () if total < MIN_PARALLEL => 1,
        () => threads(),
    };
    if threads <= 1 || items.len() <= 1 {
        return items.iter().enumerate().map(|(i, t)| f(i, t)).collect();
    }
    // Runs of about equal weight.
    let per_run = total.div_ceil(threads * RUNS_PER_THREAD).max(1);
    let mut runs = Vec::new();
    let (mut start, mut acc) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        acc += weight(item);
        if acc >= per_run {
            runs.push(start..i + 1);
            (start, acc) = (i + 1, 0);
        }
    }
    if start < items.len() {
        runs.push(start..items.len());
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let run = next.fetch_add(1, Ordering::Relaxed);
            let Some(range) = runs.get(run) else {
                return done;
            };
            let results: Vec<R> = range.clone().map(|i| f(i, &items[i])).collect();
            done.push((run, results));
        }
    };
    let mut done: Vec<(usize, Vec<R>)> = std::thread::scope(|s| {
        // A helper the OS will not start is no error: the runs it would
        // have taken are taken by the others, the caller included.
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(s, work).ok())
            .collect();
        let mut done = work();
        for helper in helpers {
            match helper.join() {
                Ok(theirs) => done.extend(theirs),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        done
    });
    done.sort_unstable_by_key(|(run, _)| *run);
    done.into_iter().flat_map(|(_, results)| results).collect()
}

#[cfg(test)]
thread_local! {
    /// For tests: the threads [`map`] uses on this thread whatever the
    /// weight (`Some(1)`: none but the caller).
    pub static FORCE_THREADS: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The threads to use, the calling one included.
fn threads() -> usize {
    if cfg!(feature = "parallel-compilation") {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(16))
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_order_of_the_items() {
        let items: Vec<usize> = (0..10_000).collect();
        // Heavy enough to be split among threads.
        let out = map(&items, |_| 1 << 10, |i, &x| (i, x * 2));
        assert_eq!(out.len(), items.len());
        assert!(
            out.iter()
                .enumerate()
                .all(|(i, &(j, y))| i == j && y == 2 * i)
        );
        // And light enough not to be.
        let out = map(&items[..10], |_| 1, |i, &x| (i, x));
        assert_eq!(out, (0..10).map(|i| (i, i)).collect::<Vec<_>>());
        // Split however many ways, whatever the machine.
        for threads in [2, 3, 7] {
            FORCE_THREADS.set(Some(threads));
            let out = map(&items, |&x| x % 97, |i, &x| (i, x + 1));
            FORCE_THREADS.set(None);
            assert!(
                out.iter()
                    .enumerate()
                    .all(|(i, &(j, y))| i == j && y == i + 1)
            );
        }
    }
}
