//! rust-debug-trap: a debug build whose spawned thread indexes out of bounds
//! in `boom`; the panic aborts (wasm `unreachable`) => trap. The tests check
//! that backtraces name `src/main.rs` and this file's line of `boom`.
#[inline(never)]
fn boom(v: &[u32], i: usize) -> u32 {
    v[i]
}

fn main() {
    println!("spawning a thread that indexes out of bounds");
    let h = std::thread::spawn(|| {
        let v = vec![1u32, 2, 3];
        boom(&v, std::env::args().count() + 7)
    });
    let r = h.join();
    println!("UNREACHABLE: join returned {:?}", r.is_ok());
    std::process::exit(1);
}
