//! sched-counter: threads increment one shared counter, and the total is
//! checked. The racy modes lose an update only when a thread is switched out
//! between its load and its store, which a normal run practically never
//! does with this little work per thread, and a schedule exploration finds.
//!
//! Usage: sched-counter MODE [THREADS] [INCREMENTS]
//!   load-store  atomic load, then atomic store of the value + 1 (racy)
//!   fetch-add   one atomic fetch_add (correct)
//!   plain       non-atomic (volatile) load, add, store (racy, a data race)
//!   mutex       a std Mutex around a plain increment (correct; futex waits)
//! Prints `total T of N` and exits 1 when an update was lost.
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;

static COUNTER: AtomicU32 = AtomicU32::new(0);
static LOCKED: Mutex<u32> = Mutex::new(0);

struct Plain(std::cell::UnsafeCell<u32>);
// SAFETY: deliberately racy: the data race is what the fixture is for.
unsafe impl Sync for Plain {}
static PLAIN: Plain = Plain(std::cell::UnsafeCell::new(0));

fn increment(mode: &str) {
    match mode {
        "load-store" => {
            let v = COUNTER.load(Ordering::SeqCst);
            COUNTER.store(v + 1, Ordering::SeqCst);
        }
        "fetch-add" => {
            COUNTER.fetch_add(1, Ordering::SeqCst);
        }
        "plain" => {
            // SAFETY: racy on purpose (see `Plain`); volatile so that the
            // compiler keeps one load and one store per increment.
            unsafe {
                let v = std::ptr::read_volatile(PLAIN.0.get());
                std::ptr::write_volatile(PLAIN.0.get(), v + 1);
            }
        }
        "mutex" => *LOCKED.lock().unwrap() += 1,
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    }
}

fn total(mode: &str) -> u32 {
    match mode {
        // SAFETY: every writer has been joined.
        "plain" => unsafe { std::ptr::read_volatile(PLAIN.0.get()) },
        "mutex" => *LOCKED.lock().unwrap(),
        _ => COUNTER.load(Ordering::SeqCst),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_else(|| "load-store".into());
    let threads: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let increments: u32 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(50);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let mode = mode.clone();
            thread::spawn(move || {
                for _ in 0..increments {
                    increment(&mode);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let expected = threads * increments;
    let got = total(&mode);
    println!("total {got} of {expected}");
    if got != expected {
        std::process::exit(1);
    }
}
