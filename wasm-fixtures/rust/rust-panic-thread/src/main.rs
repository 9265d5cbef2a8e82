//! rust-panic-thread: a spawned thread panics. panic=abort on
//! wasm32-wasip1-threads, so the panic aborts (wasm `unreachable`) => trap.
//! Expected stdout: "spawning panicking thread\n"; stderr has the panic message.
use std::thread;

fn main() {
    println!("spawning panicking thread");
    let h = thread::spawn(|| {
        let v: Vec<u32> = std::env::args().map(|a| a.len() as u32).collect();
        if v.len() < 1000 {
            panic!("deliberate panic in spawned thread");
        }
        v.len()
    });
    let r = h.join();
    // Only reachable if the panic did not abort the whole program.
    println!("UNREACHABLE: join returned {:?}", r.is_ok());
    std::process::exit(1);
}
