//! bench-pipeline: usage: bench-pipeline [mpsc|crossbeam] [ITEMS=1000000]
//!                        lines [THREADS=8] [LINES=2000]
//!
//! A producer, four stages and the consumer (main): six threads passing ITEMS
//! integers through five bounded channels (capacity 256) of
//! `std::sync::mpsc` or crossbeam-channel. Each stage does a little work
//! (one multiply-add); the consumer checks the sum. Output (exit 0):
//!   RESULT items=N
//!   RESULT checksum=<hex>
//!   RESULT elapsed_ns=<int>
//!
//! `lines`: THREADS threads each write LINES lines of 60 bytes to stdout, one
//! `write` call per line (through a locked `Stdout`, so lines never tear);
//! the RESULT lines go to stderr, after the timed part.
use std::io::Write;
use std::time::Instant;

const CAPACITY: usize = 256;
const STAGES: usize = 4;

fn stage(x: u64, i: usize) -> u64 {
    x.wrapping_mul(6364136223846793005).wrapping_add(i as u64 + 1)
}

fn mpsc(items: u64) -> u64 {
    use std::sync::mpsc::sync_channel;
    let (tx, mut rx) = sync_channel::<u64>(CAPACITY);
    let mut threads = vec![std::thread::spawn(move || {
        for i in 0..items {
            tx.send(i).unwrap();
        }
    })];
    for s in 0..STAGES {
        let (tx, next) = sync_channel::<u64>(CAPACITY);
        let input = std::mem::replace(&mut rx, next);
        threads.push(std::thread::spawn(move || {
            for x in input {
                tx.send(stage(x, s)).unwrap();
            }
        }));
    }
    let sum = rx.iter().fold(0u64, |a, x| a.wrapping_add(x));
    for t in threads {
        t.join().unwrap();
    }
    sum
}

fn crossbeam(items: u64) -> u64 {
    use crossbeam_channel::bounded;
    let (tx, mut rx) = bounded::<u64>(CAPACITY);
    let mut threads = vec![std::thread::spawn(move || {
        for i in 0..items {
            tx.send(i).unwrap();
        }
    })];
    for s in 0..STAGES {
        let (tx, next) = bounded::<u64>(CAPACITY);
        let input = std::mem::replace(&mut rx, next);
        threads.push(std::thread::spawn(move || {
            for x in input {
                tx.send(stage(x, s)).unwrap();
            }
        }));
    }
    let sum = rx.iter().fold(0u64, |a, x| a.wrapping_add(x));
    for t in threads {
        t.join().unwrap();
    }
    sum
}

fn lines(threads: u64, lines: u64) {
    let start = Instant::now();
    let writers: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let letter = b'a' + (t % 26) as u8;
                for l in 0..lines {
                    let mut line = format!("T{t} L{l:04} ").into_bytes();
                    line.resize(59, letter);
                    line.push(b'\n');
                    std::io::stdout().lock().write_all(&line).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let elapsed = start.elapsed();
    eprintln!("RESULT lines={}", threads * lines);
    eprintln!("RESULT elapsed_ns={}", elapsed.as_nanos());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("lines") {
        let n = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
        lines(n(2, 8), n(3, 2000));
        return;
    }
    let kind = args.get(1).map(String::as_str).unwrap_or("mpsc");
    let items: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let start = Instant::now();
    let sum = match kind {
        "mpsc" => mpsc(items),
        "crossbeam" => crossbeam(items),
        other => {
            eprintln!("unknown channel kind {other}: mpsc or crossbeam");
            std::process::exit(2);
        }
    };
    let elapsed = start.elapsed();
    let expected = (0..items).fold(0u64, |a, i| {
        a.wrapping_add((0..STAGES).fold(i, |x, s| stage(x, s)))
    });
    if sum != expected {
        eprintln!("checksum {sum:x}, expected {expected:x}");
        std::process::exit(1);
    }
    println!("RESULT items={items}");
    println!("RESULT checksum={sum:x}");
    println!("RESULT elapsed_ns={}", elapsed.as_nanos());
}
