//! rust-threads: std::thread spawn/join with return values, Mutex+Condvar
//! handshake, mpsc with several producers, thread::scope, thread_local!.
//! Deterministic output; exits 0 (a failed check panics => abort => trap).
use std::cell::Cell;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

thread_local! {
    static TLS: Cell<u64> = const { Cell::new(1) };
}

fn main() {
    // 1. spawn/join with return values (plus a named thread)
    let handles: Vec<_> = (1..=4u64)
        .map(|k| {
            thread::Builder::new()
                .name(format!("worker-{k}"))
                .spawn(move || {
                    assert_eq!(thread::current().name(), Some(format!("worker-{k}").as_str()));
                    (1..=1000u64).map(|i| i * k).sum::<u64>()
                })
                .expect("spawn")
        })
        .collect();
    let results: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    println!("spawn/join: {:?}", results);

    // 2. Mutex + Condvar handshake: ping -> pong, 10 rounds
    let pair = Arc::new((Mutex::new((0u32, 0u32)), Condvar::new())); // (ping, pong)
    let p2 = Arc::clone(&pair);
    let responder = thread::spawn(move || {
        let (m, cv) = &*p2;
        for round in 1..=10 {
            let mut g = cv.wait_while(m.lock().unwrap(), |s| s.0 < round).unwrap();
            g.1 = round;
            cv.notify_all();
        }
    });
    {
        let (m, cv) = &*pair;
        for round in 1..=10 {
            let mut g = m.lock().unwrap();
            g.0 = round;
            cv.notify_all();
            let g = cv.wait_while(g, |s| s.1 < round).unwrap();
            assert_eq!(g.1, round);
        }
    }
    responder.join().unwrap();
    println!("condvar handshake: 10 rounds ok");

    // 3. mpsc with 4 producers x 250 messages
    let (tx, rx) = mpsc::channel::<(u32, u32)>();
    let producers: Vec<_> = (0..4u32)
        .map(|p| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..250u32 {
                    tx.send((p, i)).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let mut per_producer = [0u32; 4];
    let mut last = [None::<u32>; 4];
    let mut total: u64 = 0;
    for (p, i) in rx {
        // per-producer FIFO order must hold
        assert!(last[p as usize].map_or(true, |l| l + 1 == i));
        last[p as usize] = Some(i);
        per_producer[p as usize] += 1;
        total += i as u64;
    }
    for h in producers {
        h.join().unwrap();
    }
    println!("mpsc: {} messages, per producer {:?}, sum {}", per_producer.iter().sum::<u32>(), per_producer, total);

    // 4. thread::scope: parallel mutation of borrowed chunks
    let mut data: Vec<u64> = (0..1000).collect();
    thread::scope(|s| {
        for chunk in data.chunks_mut(250) {
            s.spawn(move || {
                for x in chunk.iter_mut() {
                    *x *= 2;
                }
            });
        }
    });
    println!("scope: sum {}", data.iter().sum::<u64>());

    // 5. thread_local!: each thread starts from the initializer
    TLS.with(|t| t.set(99));
    let tls: Vec<u64> = (0..3u64)
        .map(|k| {
            thread::spawn(move || {
                TLS.with(|t| {
                    assert_eq!(t.get(), 1);
                    t.set(t.get() + k);
                    t.get()
                })
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    println!("thread_local: threads {:?}, main {}", tls, TLS.with(|t| t.get()));
    println!("rust-threads ok");
}
