//! The stable-toolchain runner: checks the modules of consecutive seeds for
//! a given time and saves every failing one.
//!
//! ```text
//! cargo run --release -p rewrite-diff -- [--seconds N] [--seed FIRST] [--count N] [--out DIR]
//! ```

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rewrite_diff::{Verdict, check, module_for_seed, to_text};

struct Args {
    seconds: u64,
    seed: u64,
    count: u64,
    out: std::path::PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 600,
        seed: 0,
        count: u64::MAX,
        out: "target/rewrite-diff-failures".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => args.seconds = value()?.parse().map_err(|e| format!("{e}"))?,
            "--seed" => args.seed = value()?.parse().map_err(|e| format!("{e}"))?,
            "--count" => args.count = value()?.parse().map_err(|e| format!("{e}"))?,
            "--out" => args.out = value()?.into(),
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    Ok(args)
}

#[derive(Default)]
struct Tally {
    modules: u64,
    same: u64,
    inconclusive: u64,
    not_applicable: u64,
    refused: u64,
    steps: u64,
    bugs: u64,
    dropped: u64,
}

impl Tally {
    fn line(&self, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64();
        format!(
            "{:.0}s: {} modules ({:.1}/s): {} compared to the end, {} inconclusive (fuel/stack), \
             {} not rewritten, {} refused (unstoppable waits); {} steps compared; {} bugs; {} generated modules dropped (GC types)",
            secs,
            self.modules,
            self.modules as f64 / secs.max(1e-9),
            self.same,
            self.inconclusive,
            self.not_applicable,
            self.refused,
            self.steps,
            self.bugs,
            self.dropped
        )
    }
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("rewrite-diff: {e}");
            std::process::exit(2);
        }
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    // A module that hangs (a wait the harness failed to bound) would stop
    // the run silently: report its seed instead.
    let current = Arc::new(AtomicU64::new(args.seed));
    let progress = Arc::new(AtomicU64::new(0));
    {
        let (current, progress) = (current.clone(), progress.clone());
        std::thread::spawn(move || {
            let mut last = u64::MAX;
            loop {
                std::thread::sleep(Duration::from_secs(120));
                let now = progress.load(Ordering::SeqCst);
                if now == last {
                    eprintln!(
                        "rewrite-diff: seed {} has run for over two minutes",
                        current.load(Ordering::SeqCst)
                    );
                    std::process::abort();
                }
                last = now;
            }
        });
    }
    std::fs::create_dir_all(&args.out).ok();
    let mut tally = Tally::default();
    let mut last_report = Instant::now();
    let mut seed = args.seed;
    while Instant::now() < deadline && tally.modules < args.count {
        current.store(seed, Ordering::SeqCst);
        let (wasm, attempts) = module_for_seed(seed);
        tally.dropped += u64::from(attempts - 1);
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| check(&wasm)));
        tally.modules += 1;
        let bug = match result {
            Ok(Ok(Verdict::Same { steps })) => {
                tally.same += 1;
                tally.steps += steps as u64;
                None
            }
            Ok(Ok(Verdict::Inconclusive { steps })) => {
                tally.inconclusive += 1;
                tally.steps += steps as u64;
                None
            }
            Ok(Ok(Verdict::NotApplicable)) => {
                tally.not_applicable += 1;
                None
            }
            Ok(Ok(Verdict::Refused)) => {
                tally.refused += 1;
                None
            }
            Ok(Err(bug)) => Some(bug.0),
            Err(panic) => Some(format!(
                "panic: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        };
        if let Some(bug) = bug {
            tally.bugs += 1;
            let path = args.out.join(format!("seed-{seed}.wat"));
            let text = format!(
                ";; seed {seed}: {}\n{}",
                bug.replace('\n', "\n;; "),
                to_text(&wasm)
            );
            std::fs::write(&path, text).ok();
            println!("seed {seed}: {bug}\n  saved as {}", path.display());
        }
        progress.fetch_add(1, Ordering::SeqCst);
        if last_report.elapsed() >= Duration::from_secs(30) {
            // The seed narrows down a later abort (an allocation failure
            // cannot be caught) to the seeds since this line.
            println!("{} (next seed {})", tally.line(start.elapsed()), seed + 1);
            last_report = Instant::now();
        }
        seed += 1;
    }
    println!("seeds {}..{}", args.seed, seed);
    println!("{}", tally.line(start.elapsed()));
    if tally.bugs > 0 {
        std::process::exit(1);
    }
}
