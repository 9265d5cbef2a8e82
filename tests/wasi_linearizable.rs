//! A concurrent, differential test of the whole WASI file layer: every
//! multi-threaded history of calls our host answers must be linearizable
//! against `wasmtime-wasi`'s own context.
//!
//! **What it checks.** [`SharedWasi`] answers many calls itself, beside the
//! context and without its lock (cursor reads, writes, seeks and `fd_tell`
//! of files, `fd_filestat_get`, `path_filestat_get`, `fd_readdir`, writes to
//! stdout), and promises to answer as the context would. For concurrent
//! callers that means: whatever N threads observe, and whatever is left in
//! the files and on stdout at the end, must be what *some* serial order of
//! the same calls gives on a plain `wasmtime-wasi` context, an order that
//! keeps every call after the calls that returned before it was made.
//!
//! **How.** A seeded generator (splitmix64) builds a small world — a
//! preopened scratch directory with two or three files and a subdirectory —
//! a setup prefix run on one thread (several descriptors of one file, one of
//! them in append mode, another file, the subdirectory; a first listing of
//! both directories and a first write to stdout, whose slow first use would
//! otherwise keep the threads from overlapping), and 2–4 threads of
//! calls: `path_open` (CREAT, TRUNC, EXCL, DIRECTORY, APPEND, read/write
//! access), `fd_close`, `fd_renumber`, `fd_read`/`fd_write` at the cursor,
//! `fd_pread`/`fd_pwrite`, `fd_seek` (SET/CUR/END, negative and huge
//! offsets), `fd_tell`, `fd_filestat_get`/`set_size`/`set_times`,
//! `fd_fdstat_get`/`set_flags`, `fd_readdir` with cookies and small buffers,
//! `path_filestat_get`, `path_unlink_file`, `path_rename`,
//! `path_create_directory`, and `fd_write` to stdout. Some histories are
//! weighted towards races: two threads on one shared descriptor, one doing
//! many cursor writes (or reads, or appends of nothing) while the other
//! seeks with `WHENCE_CUR`/`WHENCE_END` and offset 0 (what `ftell` does);
//! writes to stdout while another thread renumbers a file onto fd 1;
//! listings and stats of a directory while another thread creates, renames
//! and unlinks in it; or writes and positional writes through the append
//! descriptor while another thread toggles its append flag and then closes
//! it or renumbers another descriptor onto it.
//!
//! The history runs on one [`SharedWasi`] (a clone per OS thread, as each
//! guest thread's store holds one), the threads released together by a
//! spinning barrier; each call is driven as the host's linker glue drives
//! it and is bracketed by stamps of one global counter (taken before the
//! call and after it), which give the real-time order. Recorded per call:
//! the errno or the value, bytes read, the fd an open returned, stat and
//! readdir output normalized (file types, sizes, link counts, names,
//! cookies; never timestamps, inode numbers or device numbers); at the end,
//! every file of the scratch directory (names, types, bytes) and
//! everything written to stdout.
//!
//! The check is a Wing & Gong / Lowe search: depth first over the calls
//! that may come next (all their thread's earlier calls done, and no call
//! not yet placed returned before they were made), each applied to the
//! reference — a fresh `WasiCtxBuilder::build_p1()` context over a fresh
//! copy of the world, called through the same `WasiSnapshotPreview1`
//! trait, replaying setup and the order so far — and kept only if the
//! reference gives exactly the observed result (and stdout so far is a
//! prefix of what was observed); a complete order must leave exactly the
//! observed files and stdout. fd numbers are compared exactly: the context
//! numbers descriptors deterministically from the order of opens, closes
//! and renumbers, and our host lets the context do all of those.
//!
//! What keeps the search small: a call that changes nothing (`fd_tell`,
//! the stats, `fd_readdir`, `fd_pread`, `fd_seek` by 0 from the current
//! position) and agrees with the reference is placed for good (any order
//! placing it later gives the same results with it there), and trying it
//! costs no replay; a seek or read the reference disagrees with is undone
//! by putting the position back; writes are tried first where their bytes
//! land as the end state shows. Backtracking otherwise replays the prefix
//! from scratch. Once a node has failed, nodes are memoized on (calls
//! done, a fingerprint of the reference's whole state: the files, every
//! open descriptor's type, flags, rights, position and the file it names,
//! the highest fd number handed out, stdout's length, and the order
//! listings give). A search past 300 000 nodes or 10 s is *undecided*:
//! reported, counted, not a failure.
//!
//! One allowance: a read that ran while another thread wrote through
//! another descriptor may return other bytes, or another count, than the
//! reference; it is let through (and counted), and a read at the cursor
//! leaves the reference's position where ours left it. Linux makes a read
//! atomic only with the writes of its own file description: one through
//! another description may see a write in progress partly or not at all
//! (preempted in its copy, or reading the size before the write's end).
//! Native threads see the same; the context's lock hides it.
//!
//! **Seeds.** A fixed base seed, so CI runs the same histories (the races
//! themselves differ run to run); `WASI_LIN_SEED=n` runs history `n` over
//! and over for the budget; `WASI_LIN_BASE=n|random` moves the base;
//! `WASI_LIN_SECONDS` is the budget (20 s by default);
//! `WASI_LIN_KEEP_GOING=1` counts failures instead of stopping at the first
//! (the test still fails at the end); `WASI_LIN_DIR` places the scratch
//! directories (the system temp dir by default; `/dev/shm` runs about
//! twice as many histories, and tmpfs takes offsets up to 2^63 where ext4
//! stops at 16 TiB); `WASI_LIN_VERBOSE=1` prints a line per history,
//! `WASI_LIN_SHOW=1` every history in full. A failure prints the seed, the
//! history per thread with stamps, the observed results, the longest order
//! the reference agreed with and where it first disagreed, and the command
//! line that runs that seed again. `just wasi-race 3600` is the long run.
//!
//! **Left out.** FIFOs: the open of a FIFO blocks until its other end
//! exists, and a sequential replay of a blocking open cannot work (the FIFO
//! paths have a stress test of their own). Stdin, stderr, sockets and
//! `poll_oneoff`, symlinks and hard links (`path_link`, `path_symlink`,
//! `path_readlink`), `path_remove_directory`, `fd_sync`/`fd_advise`,
//! timestamps (set, but never compared: they are not a function of the
//! order), and guest memory shared between threads (each thread has a
//! memory of its own, as a region of the one shared memory would be; some
//! histories pass it as `GuestMemory::Shared`, some as `Unshared`). Closing
//! or renumbering the preopen itself is not generated.

use std::cell::UnsafeCell;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasi_threads_host::{SharedOutput, Stdio, WasiThreads, compile, engine_config};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p1::types::{self, Fdflags, Fstflags, Lookupflags, Oflags, Rights, Whence};
use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wiggle::{GuestMemory, GuestPtr};

// ---------------------------------------------------------------------------
// Seeds and the generator.

/// splitmix64: small, seedable, good enough to pick calls.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed ^ 0x243F_6A88_85A3_08D3)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True `percent` times in a hundred.
    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The preopened scratch directory's fd.
const PREOPEN: u32 = 3;
/// An fd number no history opens.
const BOGUS: u32 = 40;
/// The fd a thread uses for an open of its own that failed.
const FAILED_OPEN: u32 = 41;

/// A descriptor as the generator names it: resolved to a number when the
/// call is made (the fd the setup's or this thread's own open returned).
#[derive(Clone, Copy, Debug)]
enum FdRef {
    /// The fd setup open `i` returned.
    Setup(usize),
    /// The fd this thread's open `k` returned.
    Own(usize),
    /// A fixed number: stdout, the preopen, a bogus one.
    Raw(u32),
}

/// Rights asked for by an open.
#[derive(Clone, Copy, Debug)]
enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    fn rights(self) -> Rights {
        match self {
            Access::Read => Rights::all() - Rights::FD_WRITE,
            Access::Write => Rights::all() - Rights::FD_READ - Rights::FD_READDIR,
            Access::ReadWrite => Rights::all(),
        }
    }
}

/// Bytes, shown as text.
#[derive(Clone, PartialEq)]
struct Bytes(Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

/// One WASI call, with descriptors of type `F` ([`FdRef`] as generated,
/// `u32` as made).
#[derive(Clone, Debug)]
enum Op<F> {
    Open {
        dir: F,
        path: &'static str,
        oflags: Oflags,
        fdflags: Fdflags,
        access: Access,
    },
    Close(F),
    Renumber(F, F),
    Read(F, u32),
    Write(F, Bytes),
    Pread(F, u32, u64),
    Pwrite(F, Bytes, u64),
    Seek(F, i64, Whence),
    Tell(F),
    Filestat(F),
    SetSize(F, u64),
    SetTimes(F, Fstflags),
    Fdstat(F),
    SetFlags(F, Fdflags),
    Readdir(F, u32, u64),
    PathFilestat(F, &'static str, bool),
    Unlink(F, &'static str),
    Rename(F, &'static str, F, &'static str),
    Mkdir(F, &'static str),
}

impl<F: Copy> Op<F> {
    fn map<G>(&self, mut f: impl FnMut(F) -> G) -> Op<G> {
        match self {
            Op::Open {
                dir,
                path,
                oflags,
                fdflags,
                access,
            } => Op::Open {
                dir: f(*dir),
                path,
                oflags: *oflags,
                fdflags: *fdflags,
                access: *access,
            },
            Op::Close(fd) => Op::Close(f(*fd)),
            Op::Renumber(from, to) => {
                let from = f(*from);
                Op::Renumber(from, f(*to))
            }
            Op::Read(fd, len) => Op::Read(f(*fd), *len),
            Op::Write(fd, data) => Op::Write(f(*fd), data.clone()),
            Op::Pread(fd, len, at) => Op::Pread(f(*fd), *len, *at),
            Op::Pwrite(fd, data, at) => Op::Pwrite(f(*fd), data.clone(), *at),
            Op::Seek(fd, offset, whence) => Op::Seek(f(*fd), *offset, *whence),
            Op::Tell(fd) => Op::Tell(f(*fd)),
            Op::Filestat(fd) => Op::Filestat(f(*fd)),
            Op::SetSize(fd, size) => Op::SetSize(f(*fd), *size),
            Op::SetTimes(fd, flags) => Op::SetTimes(f(*fd), *flags),
            Op::Fdstat(fd) => Op::Fdstat(f(*fd)),
            Op::SetFlags(fd, flags) => Op::SetFlags(f(*fd), *flags),
            Op::Readdir(fd, len, cookie) => Op::Readdir(f(*fd), *len, *cookie),
            Op::PathFilestat(fd, path, follow) => Op::PathFilestat(f(*fd), path, *follow),
            Op::Unlink(fd, path) => Op::Unlink(f(*fd), path),
            Op::Rename(from_dir, from, to_dir, to) => {
                let from_dir = f(*from_dir);
                Op::Rename(from_dir, from, f(*to_dir), to)
            }
            Op::Mkdir(fd, path) => Op::Mkdir(f(*fd), path),
        }
    }

    /// Calls that never change the context's state (nor the files), so a
    /// search that tries one need not replay to undo it. (`fd_seek` by 0
    /// from the current position stores the position it loaded.)
    fn is_read_only(&self) -> bool {
        matches!(
            self,
            Op::Tell(_)
                | Op::Filestat(_)
                | Op::Fdstat(_)
                | Op::Readdir(..)
                | Op::PathFilestat(..)
                | Op::Pread(..)
                | Op::Seek(_, 0, Whence::Cur)
        )
    }

    /// The descriptor of a call that changes nothing but its position, so
    /// that putting the position back undoes it.
    fn moves_only(&self) -> Option<F> {
        match self {
            Op::Seek(fd, ..) | Op::Read(fd, _) => Some(*fd),
            _ => None,
        }
    }
}

/// The files and directories a history starts from.
#[derive(Clone, Debug)]
struct World {
    dirs: Vec<&'static str>,
    files: Vec<(&'static str, Bytes)>,
}

/// A generated history: the world, the setup prefix, each thread's calls.
struct Spec {
    seed: u64,
    kind: &'static str,
    world: World,
    setup: Vec<Op<u32>>,
    threads: Vec<Vec<Op<FdRef>>>,
    shared_memory: bool,
}

/// The setup's descriptors: three of "a" (the third in append mode), one of
/// "b", one of the directory "sub".
const SETUP_FILES: usize = 4;
const SETUP_DIR: usize = 4;

const PATHS: &[&str] = &[
    "a",
    "b",
    "c",
    "sub",
    "sub/x",
    "sub/y",
    "n1",
    "n2",
    ".",
    "missing/z",
];
const IN_SUB: &[&str] = &["x", "y", "n1", ".."];

fn letters(rng: &mut Rng, len: u64) -> Bytes {
    Bytes((0..len).map(|_| b'a' + rng.below(26) as u8).collect())
}

/// Bytes a thread writes: its letter and the call's index first, so lost,
/// repeated or reordered writes show.
fn tagged(rng: &mut Rng, thread: usize, call: usize, len: u64) -> Bytes {
    let mut bytes = letters(rng, len).0;
    if let Some(b) = bytes.first_mut() {
        *b = b'A' + thread as u8;
    }
    if let Some(b) = bytes.get_mut(1) {
        *b = b'0' + (call % 10) as u8;
    }
    Bytes(bytes)
}

fn generate(seed: u64) -> Spec {
    let mut rng = Rng::new(seed);
    let race = rng.percent(50);
    let variant = rng.pick(&[0, 0, 1, 1, 2, 2, 3, 4, 5]);
    let a_len = if race && variant == 1 {
        rng.range(400, 600)
    } else {
        rng.range(0, 40)
    };
    let b_len = rng.range(0, 16);
    let x_len = rng.range(0, 8);
    let mut files = vec![
        ("a", letters(&mut rng, a_len)),
        ("b", letters(&mut rng, b_len)),
        ("sub/x", letters(&mut rng, x_len)),
    ];
    if rng.percent(50) {
        let c_len = rng.range(0, 8);
        files.push(("c", letters(&mut rng, c_len)));
    }
    let world = World {
        dirs: vec!["sub"],
        files,
    };
    let open = |path, oflags, fdflags, access| Op::Open {
        dir: PREOPEN,
        path,
        oflags,
        fdflags,
        access,
    };
    let setup = vec![
        open("a", Oflags::empty(), Fdflags::empty(), Access::ReadWrite),
        open("a", Oflags::empty(), Fdflags::empty(), Access::ReadWrite),
        open("a", Oflags::empty(), Fdflags::APPEND, Access::ReadWrite),
        open("b", Oflags::empty(), Fdflags::empty(), Access::ReadWrite),
        open("sub", Oflags::DIRECTORY, Fdflags::empty(), Access::Read),
        // First uses that are slow (the host finds the directories, starts
        // stdout's pump), so that they do not keep the threads apart.
        Op::Readdir(PREOPEN, 256, 0),
        Op::Readdir(4 + SETUP_DIR as u32, 256, 0),
        Op::Write(1, Bytes(b"[setup]".to_vec())),
    ];
    let (kind, threads) = if race {
        race_threads(&mut rng, variant)
    } else {
        let n = rng.range(2, 4) as usize;
        let threads = (0..n)
            .map(|t| {
                let len = rng.range(3, 8) as usize;
                general_thread(&mut rng, t, len)
            })
            .collect();
        ("general", threads)
    };
    Spec {
        seed,
        kind,
        world,
        setup,
        threads,
        shared_memory: rng.percent(50),
    }
}

/// Two threads on one shared descriptor (plus, sometimes, a third doing
/// anything): cursor writes, reads or appends of nothing against seeks to
/// the current position or the end, and tells. Only one of the two writes
/// bytes, so the order of their calls shows in their results, not only in
/// the file at the end (which would leave the search many orders to try).
fn race_threads(rng: &mut Rng, variant: u64) -> (&'static str, Vec<Vec<Op<FdRef>>>) {
    match variant {
        3 => return ("race: stdout vs a renumber onto it", stdout_race(rng)),
        4 => return ("race: directory churn vs readdir and stat", churn_race(rng)),
        5 => {
            return (
                "race: writes vs append toggles, then a close",
                flags_race(rng),
            );
        }
        _ => {}
    }
    let fd = match variant {
        2 => FdRef::Setup(2),
        _ => FdRef::Setup(rng.below(2) as usize),
    };
    let mut a = Vec::new();
    let mut b = Vec::new();
    // A read and a seek are over faster than writes: more of them.
    let (lo, hi) = if variant == 1 { (40, 60) } else { (20, 40) };
    let n = rng.range(lo, hi) as usize;
    for i in 0..n {
        a.push(match (variant, rng.below(100)) {
            (_, 0..15) => Op::Tell(fd),
            (0, _) => {
                let len = rng.range(1, 8);
                Op::Write(fd, tagged(rng, 0, i, len))
            }
            (1, _) => Op::Read(fd, rng.range(1, 8) as u32),
            _ => Op::Write(fd, Bytes(Vec::new())),
        });
    }
    let n = rng.range(lo, hi) as usize;
    for i in 0..n {
        b.push(match (variant, rng.below(100)) {
            (2, 0..50) => {
                let len = rng.range(1, 6);
                Op::Write(fd, tagged(rng, 1, i, len))
            }
            (2, 50..80) => Op::Tell(fd),
            (2, _) => Op::Seek(fd, 0, Whence::Cur),
            (1, 0..10) => Op::Seek(fd, 0, Whence::End),
            (0, 0..35) => Op::Seek(fd, 0, Whence::End),
            (_, 0..85) => Op::Seek(fd, 0, Whence::Cur),
            (_, 85..95) => Op::Tell(fd),
            (1, _) => Op::Read(fd, rng.range(1, 4) as u32),
            _ => Op::Seek(fd, 0, Whence::End),
        });
    }
    let mut threads = vec![a, b];
    if rng.percent(20) {
        let len = rng.range(3, 5) as usize;
        threads.push(general_thread(rng, 2, len));
    }
    let kind = match variant {
        0 => "race: cursor writes vs seeks",
        1 => "race: cursor reads vs seeks",
        _ => "race: appends (some of nothing) vs tells",
    };
    (kind, threads)
}

/// One thread writes to stdout and looks at what fd 1 is, while another
/// renumbers a file onto fd 1 and writes to it: a write that starts after
/// anyone saw fd 1 become the file must go to the file.
fn stdout_race(rng: &mut Rng) -> Vec<Vec<Op<FdRef>>> {
    let stdout = FdRef::Raw(1);
    let a = (0..rng.range(20, 40) as usize)
        .map(|i| {
            if rng.percent(60) {
                Op::Write(stdout, Bytes(format!("[A{i}]").into_bytes()))
            } else {
                Op::Fdstat(stdout)
            }
        })
        .collect();
    let mut b: Vec<_> = (0..rng.range(2, 10))
        .map(|_| match rng.below(3) {
            0 => Op::Tell(FdRef::Setup(3)),
            1 => Op::Filestat(FdRef::Setup(3)),
            _ => Op::Fdstat(stdout),
        })
        .collect();
    b.push(Op::Renumber(FdRef::Setup(3), stdout));
    for i in 0..rng.range(3, 8) as usize {
        b.push(if rng.percent(70) {
            Op::Write(stdout, Bytes(format!("[B{i}]").into_bytes()))
        } else {
            Op::Fdstat(stdout)
        });
    }
    vec![a, b]
}

/// One thread writes (at the cursor and at offsets) through the append
/// descriptor while another turns its append flag off and on, looks at its
/// position, and at last closes it or renumbers another descriptor onto
/// it: what a write does depends on the flag when it runs, and no write
/// may land after the descriptor is gone.
fn flags_race(rng: &mut Rng) -> Vec<Vec<Op<FdRef>>> {
    let fd = FdRef::Setup(2);
    let a = (0..rng.range(20, 40) as usize)
        .map(|i| {
            let len = rng.range(1, 6);
            match rng.below(100) {
                0..55 => Op::Write(fd, tagged(rng, 0, i, len)),
                55..85 => {
                    let data = tagged(rng, 0, i, len);
                    Op::Pwrite(fd, data, rng.range(0, 16))
                }
                _ => Op::Tell(fd),
            }
        })
        .collect();
    let mut b: Vec<_> = (0..rng.range(10, 30))
        .map(|_| match rng.below(100) {
            0..60 => Op::SetFlags(
                fd,
                if rng.percent(50) {
                    Fdflags::APPEND
                } else {
                    Fdflags::empty()
                },
            ),
            60..80 => Op::Tell(fd),
            _ => Op::Seek(fd, 0, Whence::Cur),
        })
        .collect();
    b.push(if rng.percent(50) {
        Op::Close(fd)
    } else {
        Op::Renumber(FdRef::Setup(3), fd)
    });
    vec![a, b]
}

/// One thread lists the preopened directory and stats names in it while
/// another creates, renames, unlinks and makes directories there.
fn churn_race(rng: &mut Rng) -> Vec<Vec<Op<FdRef>>> {
    let names = ["n1", "n2", "c", "b"];
    let a = (0..rng.range(15, 30))
        .map(|_| match rng.below(100) {
            0..50 => Op::Readdir(FdRef::Raw(PREOPEN), 256, rng.range(0, 3)),
            50..80 => Op::PathFilestat(FdRef::Raw(PREOPEN), rng.pick(&names), rng.percent(50)),
            _ => Op::Readdir(FdRef::Setup(SETUP_DIR), 256, 0),
        })
        .collect();
    let mut b = Vec::new();
    let mut opens = 0;
    for _ in 0..rng.range(15, 30) {
        let dir = FdRef::Raw(PREOPEN);
        b.push(match rng.below(100) {
            0..25 => {
                opens += 1;
                Op::Open {
                    dir,
                    path: rng.pick(&names[..3]),
                    oflags: Oflags::CREAT,
                    fdflags: Fdflags::empty(),
                    access: Access::ReadWrite,
                }
            }
            25..50 => Op::Unlink(dir, rng.pick(&names)),
            50..75 => Op::Rename(dir, rng.pick(&names), dir, rng.pick(&names)),
            75..85 => Op::Mkdir(dir, rng.pick(&names[..2])),
            _ if opens > 0 => Op::Close(FdRef::Own(rng.below(opens) as usize)),
            _ => Op::Unlink(FdRef::Setup(SETUP_DIR), "x"),
        });
    }
    vec![a, b]
}

/// `len` calls of any kind.
fn general_thread(rng: &mut Rng, thread: usize, len: usize) -> Vec<Op<FdRef>> {
    let mut opens = 0;
    let mut ops = Vec::new();
    for i in 0..len {
        let op = general_op(rng, thread, i, opens);
        if matches!(op, Op::Open { .. }) {
            opens += 1;
        }
        ops.push(op);
    }
    ops
}

/// A descriptor for a call on a file: mostly the setup's and the thread's
/// own, sometimes the preopen, stdout or a bogus one.
fn file_fd(rng: &mut Rng, opens: usize) -> FdRef {
    match rng.below(100) {
        0..55 => FdRef::Setup(rng.below(SETUP_FILES as u64) as usize),
        55..80 if opens > 0 => FdRef::Own(rng.below(opens as u64) as usize),
        55..80 => FdRef::Setup(rng.below(SETUP_FILES as u64) as usize),
        80..88 => FdRef::Setup(SETUP_DIR),
        88..93 => FdRef::Raw(PREOPEN),
        93..96 => FdRef::Raw(1),
        _ => FdRef::Raw(BOGUS),
    }
}

/// As [`file_fd`], never the preopen (for calls that would close it).
fn closable_fd(rng: &mut Rng, opens: usize) -> FdRef {
    match file_fd(rng, opens) {
        FdRef::Raw(PREOPEN) | FdRef::Raw(1) if rng.percent(80) => FdRef::Raw(BOGUS),
        FdRef::Raw(PREOPEN) => FdRef::Raw(1),
        fd => fd,
    }
}

fn dir_fd(rng: &mut Rng) -> (FdRef, &'static [&'static str]) {
    match rng.below(100) {
        0..85 => (FdRef::Raw(PREOPEN), PATHS),
        85..97 => (FdRef::Setup(SETUP_DIR), IN_SUB),
        _ => (FdRef::Raw(BOGUS), PATHS),
    }
}

fn seek_offset(rng: &mut Rng) -> i64 {
    match rng.below(100) {
        0..20 => 0,
        20..70 => rng.range(0, 16) as i64 - 4,
        70..80 => -1000,
        80..88 => 1 << 62,
        88..94 => i64::MAX,
        _ => i64::MIN,
    }
}

fn small_or_huge(rng: &mut Rng) -> u64 {
    match rng.below(100) {
        0..88 => rng.range(0, 24),
        88..94 => 1 << 62,
        _ => u64::MAX,
    }
}

fn general_op(rng: &mut Rng, thread: usize, i: usize, opens: usize) -> Op<FdRef> {
    let fd = file_fd(rng, opens);
    match rng.below(100) {
        0..12 => {
            let (dir, paths) = dir_fd(rng);
            let mut oflags = Oflags::empty();
            if rng.percent(35) {
                oflags |= Oflags::CREAT;
            }
            if rng.percent(15) {
                oflags |= Oflags::TRUNC;
            }
            if rng.percent(12) {
                oflags |= Oflags::EXCL;
            }
            if rng.percent(10) {
                oflags |= Oflags::DIRECTORY;
            }
            let fdflags = if rng.percent(25) {
                Fdflags::APPEND
            } else {
                Fdflags::empty()
            };
            let access = match rng.below(100) {
                0..60 if !oflags.contains(Oflags::DIRECTORY) => Access::ReadWrite,
                60..75 => Access::Write,
                _ => Access::Read,
            };
            Op::Open {
                dir,
                path: rng.pick(paths),
                oflags,
                fdflags,
                access,
            }
        }
        12..17 => Op::Close(closable_fd(rng, opens)),
        17..20 => {
            let from = closable_fd(rng, opens);
            let to = if rng.percent(10) {
                FdRef::Raw(1)
            } else {
                closable_fd(rng, opens)
            };
            Op::Renumber(from, to)
        }
        20..28 => Op::Read(fd, rng.range(0, 16) as u32),
        28..38 => {
            let len = if rng.percent(8) { 0 } else { rng.range(1, 8) };
            Op::Write(fd, tagged(rng, thread, i, len))
        }
        38..42 => Op::Pread(fd, rng.range(1, 16) as u32, small_or_huge(rng)),
        42..46 => {
            let len = rng.range(1, 8);
            let data = tagged(rng, thread, i, len);
            let at = if rng.percent(90) {
                rng.range(0, 24)
            } else {
                1 << 62
            };
            Op::Pwrite(fd, data, at)
        }
        46..54 => {
            let whence = rng.pick(&[Whence::Set, Whence::Cur, Whence::End]);
            Op::Seek(fd, seek_offset(rng), whence)
        }
        54..59 => Op::Tell(fd),
        59..63 => Op::Filestat(fd),
        63..66 => {
            let size = if rng.percent(94) {
                rng.range(0, 24)
            } else {
                u64::MAX
            };
            Op::SetSize(fd, size)
        }
        66..68 => Op::SetTimes(fd, Fstflags::from_bits_truncate(rng.below(16) as u16)),
        68..71 => Op::Fdstat(fd),
        71..74 => {
            let flags = match rng.below(100) {
                0..50 => Fdflags::APPEND,
                50..95 => Fdflags::empty(),
                _ => Fdflags::DSYNC,
            };
            Op::SetFlags(fd, flags)
        }
        74..79 => {
            let dir = match rng.below(100) {
                0..50 => FdRef::Setup(SETUP_DIR),
                50..90 => FdRef::Raw(PREOPEN),
                _ => fd,
            };
            let len = rng.pick(&[24, 26, 40, 64, 100, 200]);
            Op::Readdir(dir, len, rng.range(0, 6))
        }
        79..84 => {
            let (dir, paths) = dir_fd(rng);
            Op::PathFilestat(dir, rng.pick(paths), rng.percent(50))
        }
        84..87 => {
            let (dir, paths) = dir_fd(rng);
            Op::Unlink(dir, rng.pick(paths))
        }
        87..90 => {
            let (dir, paths) = dir_fd(rng);
            let from = rng.pick(paths);
            Op::Rename(dir, from, FdRef::Raw(PREOPEN), rng.pick(PATHS))
        }
        90..92 => {
            let (dir, _) = dir_fd(rng);
            Op::Mkdir(dir, rng.pick(&["n1", "n2", "sub/y", "d2"]))
        }
        _ => {
            let line = format!("[t{thread}c{i}]");
            Op::Write(FdRef::Raw(1), Bytes(line.into_bytes()))
        }
    }
}

// ---------------------------------------------------------------------------
// Making calls.

/// Host-call fuel for every call: far more than any call here copies.
const FUEL: usize = 1 << 20;
/// Guest memory layout: the iovec, the bytes it points to, paths, readdir.
const IOV: u32 = 0;
const DATA: u32 = 1024;
const PATH_A: u32 = 4096;
const PATH_B: u32 = 4608;
const DIRENTS: u32 = 8192;
const MEMORY: usize = 16384;

/// A guest memory of one thread.
enum Memory {
    Unshared(Vec<u8>),
    Shared(Vec<UnsafeCell<u8>>),
}

impl Memory {
    fn new(shared: bool) -> Self {
        if shared {
            Memory::Shared((0..MEMORY).map(|_| UnsafeCell::new(0)).collect())
        } else {
            Memory::Unshared(vec![0; MEMORY])
        }
    }

    fn view(&mut self) -> GuestMemory<'_> {
        match self {
            Memory::Unshared(bytes) => GuestMemory::Unshared(bytes),
            Memory::Shared(cells) => GuestMemory::Shared(&cells[..]),
        }
    }
}

/// Drives one call's future as the host's linker glue does: one poll with
/// the runtime as ambient context, `in_tokio` only if that did not finish.
fn drive<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let first = wasmtime_wasi::runtime::with_ambient_tokio_runtime(|| {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        future.as_mut().poll(&mut cx)
    });
    match first {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => wasmtime_wasi::runtime::in_tokio(future),
    }
}

fn show<T>(r: Result<T, types::Error>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(e) => match e.downcast() {
            Ok(errno) => format!("errno {errno:?}"),
            Err(trap) => format!("trap {trap}"),
        },
    }
}

fn put_path(m: &mut GuestMemory<'_>, at: u32, path: &str) -> GuestPtr<str> {
    let len = path.len() as u32;
    m.copy_from_slice(path.as_bytes(), GuestPtr::new((at, len)))
        .unwrap();
    GuestPtr::new((at, len))
}

fn ciovs(m: &mut GuestMemory<'_>, data: &[u8]) -> types::CiovecArray {
    let len = data.len() as u32;
    m.copy_from_slice(data, GuestPtr::new((DATA, len))).unwrap();
    m.write(GuestPtr::<u32>::new(IOV), DATA).unwrap();
    m.write(GuestPtr::<u32>::new(IOV + 4), len).unwrap();
    GuestPtr::new((IOV, 1))
}

fn iovs(m: &mut GuestMemory<'_>, len: u32) -> types::IovecArray {
    iovs_at(m, DATA, len)
}

/// One iovec for `len` bytes at `at`, filled with a marker.
fn iovs_at(m: &mut GuestMemory<'_>, at: u32, len: u32) -> types::IovecArray {
    m.copy_from_slice(&vec![0xEE; len as usize], GuestPtr::new((at, len)))
        .unwrap_or_else(|e| panic!("{len} bytes at {at}: {e:?}"));
    m.write(GuestPtr::<u32>::new(IOV), at).unwrap();
    m.write(GuestPtr::<u32>::new(IOV + 4), len).unwrap();
    GuestPtr::new((IOV, 1))
}

fn read_back(m: &GuestMemory<'_>, at: u32, n: u32) -> Vec<u8> {
    m.to_vec(GuestPtr::<[u8]>::new((at, n))).unwrap()
}

fn filestat(st: types::Filestat) -> String {
    format!("{:?} size {} nlink {}", st.filetype, st.size, st.nlink)
}

/// `fd_readdir`'s bytes as text, without the inode numbers (which are
/// hashes that differ between contexts): each whole entry as
/// `cookie:type:name`, and what a short buffer cut off.
fn dirents(buf: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < buf.len() {
        let head = &buf[i..buf.len().min(i + 24)];
        if head.len() < 24 {
            let mut cut = head.to_vec();
            for b in cut.iter_mut().skip(8).take(8) {
                *b = 0;
            }
            let _ = write!(out, " cut:{}", Bytes(cut).0.escape_ascii());
            break;
        }
        let next = u64::from_le_bytes(head[0..8].try_into().unwrap());
        let namlen = u32::from_le_bytes(head[16..20].try_into().unwrap()) as usize;
        let end = buf.len().min(i + 24 + namlen);
        let name = &buf[i + 24..end];
        let _ = write!(out, " {next}:{}:{}", head[20], name.escape_ascii());
        if end < i + 24 + namlen {
            out.push('~');
        }
        i += 24 + namlen;
    }
    out
}

/// Makes `op` through the WASI trait; its observable result as text.
fn exec<W: WasiSnapshotPreview1>(w: &mut W, m: &mut GuestMemory<'_>, op: &Op<u32>) -> String {
    w.set_hostcall_fuel(FUEL);
    let unit = |()| "ok".to_string();
    match op {
        Op::Open {
            dir,
            path,
            oflags,
            fdflags,
            access,
        } => {
            let path = put_path(m, PATH_A, path);
            let rights = access.rights();
            show(
                drive(w.path_open(
                    m,
                    (*dir).into(),
                    Lookupflags::SYMLINK_FOLLOW,
                    path,
                    *oflags,
                    rights,
                    rights,
                    *fdflags,
                )),
                |fd| format!("fd {}", u32::from(fd)),
            )
        }
        Op::Close(fd) => show(drive(w.fd_close(m, (*fd).into())), unit),
        Op::Renumber(from, to) => show(drive(w.fd_renumber(m, (*from).into(), (*to).into())), unit),
        Op::Read(fd, len) => {
            let iovs = iovs(m, *len);
            let r = drive(w.fd_read(m, (*fd).into(), iovs));
            show(r, |n| {
                format!("n {n} {:?}", Bytes(read_back(m, DATA, n.min(*len))))
            })
        }
        Op::Pread(fd, len, at) => {
            let iovs = iovs(m, *len);
            let r = drive(w.fd_pread(m, (*fd).into(), iovs, *at));
            show(r, |n| {
                format!("n {n} {:?}", Bytes(read_back(m, DATA, n.min(*len))))
            })
        }
        Op::Write(fd, data) => {
            let ciovs = ciovs(m, &data.0);
            show(drive(w.fd_write(m, (*fd).into(), ciovs)), |n| {
                format!("n {n}")
            })
        }
        Op::Pwrite(fd, data, at) => {
            let ciovs = ciovs(m, &data.0);
            show(drive(w.fd_pwrite(m, (*fd).into(), ciovs, *at)), |n| {
                format!("n {n}")
            })
        }
        Op::Seek(fd, offset, whence) => {
            show(drive(w.fd_seek(m, (*fd).into(), *offset, *whence)), |p| {
                format!("pos {p}")
            })
        }
        Op::Tell(fd) => show(w.fd_tell(m, (*fd).into()), |p| format!("pos {p}")),
        Op::Filestat(fd) => show(drive(w.fd_filestat_get(m, (*fd).into())), filestat),
        Op::SetSize(fd, size) => show(drive(w.fd_filestat_set_size(m, (*fd).into(), *size)), unit),
        Op::SetTimes(fd, flags) => show(
            drive(w.fd_filestat_set_times(m, (*fd).into(), 1_000_000_000, 2_000_000_000, *flags)),
            unit,
        ),
        Op::Fdstat(fd) => show(drive(w.fd_fdstat_get(m, (*fd).into())), |st| {
            format!(
                "{:?} {:?} {:#x} {:#x}",
                st.fs_filetype,
                st.fs_flags,
                st.fs_rights_base.bits(),
                st.fs_rights_inheriting.bits()
            )
        }),
        Op::SetFlags(fd, flags) => show(w.fd_fdstat_set_flags(m, (*fd).into(), *flags), unit),
        Op::Readdir(fd, len, cookie) => {
            m.copy_from_slice(&vec![0xEE; *len as usize], GuestPtr::new((DIRENTS, *len)))
                .unwrap();
            let r = drive(w.fd_readdir(m, (*fd).into(), GuestPtr::new(DIRENTS), *len, *cookie));
            show(r, |n| {
                format!("n {n}{}", dirents(&read_back(m, DIRENTS, n.min(*len))))
            })
        }
        Op::PathFilestat(fd, path, follow) => {
            let path = put_path(m, PATH_A, path);
            let flags = if *follow {
                Lookupflags::SYMLINK_FOLLOW
            } else {
                Lookupflags::empty()
            };
            show(
                drive(w.path_filestat_get(m, (*fd).into(), flags, path)),
                filestat,
            )
        }
        Op::Unlink(fd, path) => {
            let path = put_path(m, PATH_A, path);
            show(drive(w.path_unlink_file(m, (*fd).into(), path)), unit)
        }
        Op::Rename(from_dir, from, to_dir, to) => {
            let from = put_path(m, PATH_A, from);
            let to = put_path(m, PATH_B, to);
            show(
                drive(w.path_rename(m, (*from_dir).into(), from, (*to_dir).into(), to)),
                unit,
            )
        }
        Op::Mkdir(fd, path) => {
            let path = put_path(m, PATH_A, path);
            show(drive(w.path_create_directory(m, (*fd).into(), path)), unit)
        }
    }
}

/// The fd an open's result names, if it succeeded.
fn opened_fd(result: &str) -> Option<u32> {
    result.strip_prefix("fd ")?.parse().ok()
}

// ---------------------------------------------------------------------------
// The world on disk.

/// A fresh scratch directory holding `world`.
fn create_world(dir: &Path, world: &World) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for d in &world.dirs {
        std::fs::create_dir(dir.join(d)).unwrap();
    }
    for (name, bytes) in &world.files {
        std::fs::write(dir.join(name), &bytes.0).unwrap();
    }
}

/// An entry of the scratch directory.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    Dir,
    File(Vec<u8>),
    Other(String),
}

/// Every entry under `dir` (relative paths, sorted), with its type and, for
/// files, its bytes.
fn tree(dir: &Path) -> Vec<(String, Node)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Node)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.push((rel, Node::Dir));
                walk(root, &path, out);
            } else if meta.is_file() {
                out.push((rel, Node::File(file_bytes(&path, meta.len()))));
            } else {
                out.push((rel, Node::Other(format!("{:?}", meta.file_type()))));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// A file's bytes; of a huge (sparse) one, its size and both ends.
fn file_bytes(path: &Path, len: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    if len <= 1 << 20 {
        return std::fs::read(path).unwrap();
    }
    let mut f = std::fs::File::open(path).unwrap();
    let mut head = vec![0; 4096];
    f.read_exact(&mut head).unwrap();
    let mut tail = vec![0; 4096];
    f.seek(SeekFrom::End(-4096)).unwrap();
    f.read_exact(&mut tail).unwrap();
    let mut out = format!("<{len} bytes: ").into_bytes();
    out.extend(head);
    out.extend(b"...");
    out.extend(tail);
    out
}

fn show_tree(tree: &[(String, Node)]) -> String {
    let mut out = String::new();
    for (path, node) in tree {
        let _ = match node {
            Node::Dir => writeln!(out, "  {path}/"),
            Node::File(bytes) => writeln!(out, "  {path}: {:?}", Bytes(bytes.clone())),
            Node::Other(what) => writeln!(out, "  {path}: {what}"),
        };
    }
    out
}

/// A scratch directory no other history of this process uses.
fn scratch(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = std::env::var_os("WASI_LIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join(format!("wasi-lin-{}-{n}-{name}", std::process::id()))
}

// ---------------------------------------------------------------------------
// The concurrent run.

struct Call {
    thread: usize,
    op: Op<u32>,
    result: String,
    inv: u64,
    resp: u64,
}

struct History {
    setup: Vec<(Op<u32>, String)>,
    calls: Vec<Call>,
    files: Vec<(String, Node)>,
    stdout: Vec<u8>,
}

/// stdout of our host's run.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn run_ours(spec: &Spec, threads: &WasiThreads<()>, dir: &Path) -> History {
    create_world(dir, &spec.world);
    let capture = Capture::default();
    let out = SharedOutput::from_writer(capture.clone());
    let mut builder = WasiCtxBuilder::new();
    builder
        .preopened_dir(dir, "/d", FsPerms::ReadWrite)
        .unwrap()
        .allow_blocking_current_thread(true);
    let mut wasi = threads.wasi(builder, Stdio::new().stdout(out));

    let mut memory = Memory::new(spec.shared_memory);
    let setup: Vec<(Op<u32>, String)> = spec
        .setup
        .iter()
        .map(|op| (op.clone(), exec(&mut wasi, &mut memory.view(), op)))
        .collect();
    let setup_fds: Vec<u32> = setup
        .iter()
        .map(|(_, r)| opened_fd(r).unwrap_or(FAILED_OPEN))
        .collect();

    let clock = AtomicU64::new(0);
    let ready = AtomicU64::new(0);
    let n = spec.threads.len() as u64;
    let mut calls: Vec<Call> = std::thread::scope(|s| {
        let handles: Vec<_> = spec
            .threads
            .iter()
            .enumerate()
            .map(|(t, ops)| {
                let mut wasi = wasi.clone();
                let (clock, ready, setup_fds) = (&clock, &ready, &setup_fds);
                let shared = spec.shared_memory;
                s.spawn(move || {
                    let mut memory = Memory::new(shared);
                    let mut own: Vec<u32> = Vec::new();
                    let mut calls = Vec::new();
                    // Released together: a spinning start (a parked
                    // thread takes longer to wake than a short history
                    // takes to run).
                    ready.fetch_add(1, Ordering::SeqCst);
                    let mut spins = 0u32;
                    while ready.load(Ordering::SeqCst) < n {
                        spins += 1;
                        if spins.is_multiple_of(1024) {
                            std::thread::yield_now();
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                    for op in ops {
                        let op = op.map(|fd| match fd {
                            FdRef::Setup(i) => setup_fds[i],
                            FdRef::Own(k) => own.get(k).copied().unwrap_or(FAILED_OPEN),
                            FdRef::Raw(n) => n,
                        });
                        let inv = clock.fetch_add(1, Ordering::SeqCst);
                        let result = exec(&mut wasi, &mut memory.view(), &op);
                        let resp = clock.fetch_add(1, Ordering::SeqCst);
                        if let Op::Open { .. } = op {
                            own.push(opened_fd(&result).unwrap_or(FAILED_OPEN));
                        }
                        calls.push(Call {
                            thread: t,
                            op,
                            result,
                            inv,
                            resp,
                        });
                    }
                    calls
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    drop(wasi);
    calls.sort_by_key(|c| c.inv);
    let files = tree(dir);
    let stdout = capture.0.lock().unwrap().clone();
    History {
        setup,
        calls,
        files,
        stdout,
    }
}

// ---------------------------------------------------------------------------
// The sequential reference: a plain `wasmtime-wasi` context.

struct Reference {
    ctx: WasiP1Ctx,
    stdout: MemoryOutputPipe,
    memory: Vec<u8>,
    dir: PathBuf,
    /// The highest fd number the context has handed out: the context
    /// reuses the highest freed number below it first, so this is state.
    max_fd: u32,
}

impl Reference {
    /// A fresh context over a fresh copy of the world, after the setup; an
    /// error if the setup's results differ from the observed ones.
    fn new(world: &World, h: &History, dir: &Path) -> Result<Self, String> {
        create_world(dir, world);
        let stdout = MemoryOutputPipe::new(1 << 20);
        let ctx = WasiCtxBuilder::new()
            .preopened_dir(dir, "/d", FsPerms::ReadWrite)
            .unwrap()
            .allow_blocking_current_thread(true)
            .stdout(stdout.clone())
            .build_p1();
        let mut reference = Reference {
            ctx,
            stdout,
            memory: vec![0; MEMORY],
            dir: dir.to_path_buf(),
            max_fd: PREOPEN,
        };
        for (op, observed) in &h.setup {
            let result = reference.apply(op);
            if &result != observed {
                return Err(format!(
                    "setup {op:?}: the reference gives {result:?}, ours gave {observed:?}"
                ));
            }
        }
        Ok(reference)
    }

    fn apply(&mut self, op: &Op<u32>) -> String {
        let result = exec(
            &mut self.ctx,
            &mut GuestMemory::Unshared(&mut self.memory),
            op,
        );
        if let Some(fd) = opened_fd(&result).filter(|_| matches!(op, Op::Open { .. })) {
            self.max_fd = self.max_fd.max(fd);
        }
        result
    }

    /// Whether `op`, a write, would put its bytes where some file of
    /// `files` (the observed end state) has them: a guess, to try first
    /// the order of concurrent writes that the end state shows.
    fn lands_as_observed(&mut self, op: &Op<u32>, files: &[(String, Node)]) -> bool {
        let (fd, data, at) = match op {
            Op::Write(fd, data) => (*fd, data, None),
            Op::Pwrite(fd, data, at) => (*fd, data, Some(*at)),
            _ => return false,
        };
        if data.0.is_empty() {
            return false;
        }
        let memory = &mut GuestMemory::Unshared(&mut self.memory);
        let Ok(st) = drive(self.ctx.fd_fdstat_get(memory, fd.into())) else {
            return false;
        };
        let offset = if st.fs_flags.contains(Fdflags::APPEND) {
            match drive(self.ctx.fd_filestat_get(memory, fd.into())) {
                Ok(st) => st.size,
                Err(_) => return false,
            }
        } else {
            match at
                .map(Ok)
                .unwrap_or_else(|| self.ctx.fd_tell(memory, fd.into()))
            {
                Ok(pos) => pos,
                Err(_) => return false,
            }
        };
        let Ok(offset) = usize::try_from(offset) else {
            return false;
        };
        files.iter().any(|(_, node)| match node {
            Node::File(bytes) => bytes.get(offset..offset + data.0.len()) == Some(&data.0[..]),
            _ => false,
        })
    }

    /// Whether some descriptor but fd 2 (stderr) is still stdout.
    fn has_stdout(&mut self) -> bool {
        let memory = &mut GuestMemory::Unshared(&mut self.memory);
        (0..=self.max_fd + 1).filter(|&fd| fd != 2).any(|fd| {
            drive(self.ctx.fd_fdstat_get(memory, fd.into())).is_ok_and(|st| {
                st.fs_filetype == types::Filetype::Unknown
                    && st.fs_rights_base.contains(Rights::FD_WRITE)
            })
        })
    }

    fn tell(&mut self, fd: u32) -> Option<u64> {
        let memory = &mut GuestMemory::Unshared(&mut self.memory);
        self.ctx.fd_tell(memory, fd.into()).ok()
    }

    /// Puts `fd`'s position back to `pos` (undoing a seek or a read).
    fn set_position(&mut self, fd: u32, pos: u64) {
        let memory = &mut GuestMemory::Unshared(&mut self.memory);
        let first = pos.min(i64::MAX as u64);
        let set = drive(
            self.ctx
                .fd_seek(memory, fd.into(), first as i64, Whence::Set),
        );
        assert_eq!(set.ok(), Some(first), "the position is put back");
        if pos > first {
            let cur = drive(
                self.ctx
                    .fd_seek(memory, fd.into(), (pos - first) as i64, Whence::Cur),
            );
            assert_eq!(cur.ok(), Some(pos), "the position is put back");
        }
    }

    fn stdout(&self) -> bytes::Bytes {
        self.stdout.contents()
    }

    /// Everything that decides the results of later calls: the files, each
    /// open descriptor (type, flags, rights, position, which file), the
    /// highest fd handed out, and how much is on stdout.
    fn fingerprint(&mut self) -> String {
        let files = tree(&self.dir);
        let mut out = String::new();
        out.push_str(&show_tree(&files));
        // The order a listing gives (on tmpfs, the order of creation).
        for dir in std::iter::once(".").chain(
            files
                .iter()
                .filter(|(_, node)| *node == Node::Dir)
                .map(|(p, _)| p.as_str()),
        ) {
            let listed: Vec<_> = std::fs::read_dir(self.dir.join(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            let _ = writeln!(out, "{dir} lists {listed:?}");
        }
        // Which paths name which file, by the context's own inode hashes.
        let mut names: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
        let memory = &mut GuestMemory::Unshared(&mut self.memory);
        for path in std::iter::once(".").chain(files.iter().map(|(p, _)| p.as_str())) {
            let at = put_path(memory, PATH_A, path);
            self.ctx.set_hostcall_fuel(FUEL);
            let st =
                drive(
                    self.ctx
                        .path_filestat_get(memory, PREOPEN.into(), Lookupflags::empty(), at),
                )
                .expect("a path of the scratch directory");
            names.entry(st.ino).or_default().push(path);
        }
        let mut unnamed: Vec<u64> = Vec::new();
        for fd in 0..=self.max_fd + 1 {
            self.ctx.set_hostcall_fuel(FUEL);
            let Ok(st) = drive(self.ctx.fd_fdstat_get(memory, fd.into())) else {
                continue;
            };
            let _ = write!(
                out,
                "fd {fd}: {:?} {:?} {:#x}",
                st.fs_filetype,
                st.fs_flags,
                st.fs_rights_base.bits()
            );
            if matches!(
                st.fs_filetype,
                types::Filetype::RegularFile | types::Filetype::Directory
            ) {
                let _ = write!(
                    out,
                    " tell {}",
                    show(self.ctx.fd_tell(memory, fd.into()), |p| p.to_string())
                );
                let st = drive(self.ctx.fd_filestat_get(memory, fd.into()))
                    .expect("stat of an open descriptor");
                match names.get(&st.ino) {
                    Some(paths) => {
                        let _ = write!(out, " names {paths:?}");
                    }
                    None => {
                        // Unlinked: which one, and what it holds.
                        let n = match unnamed.iter().position(|&i| i == st.ino) {
                            Some(n) => n,
                            None => {
                                unnamed.push(st.ino);
                                unnamed.len() - 1
                            }
                        };
                        let len = st.size.min(4096) as u32;
                        let iovs = iovs_at(memory, DIRENTS, len);
                        self.ctx.set_hostcall_fuel(FUEL);
                        let r = drive(self.ctx.fd_pread(memory, fd.into(), iovs, 0));
                        let bytes = show(r, |n| {
                            format!("{:?}", Bytes(read_back(memory, DIRENTS, n.min(len))))
                        });
                        let _ = write!(out, " unlinked #{n} size {} {bytes}", st.size);
                    }
                }
            }
            out.push('\n');
        }
        let _ = write!(out, "max fd {} stdout {}", self.max_fd, self.stdout().len());
        out
    }
}

// ---------------------------------------------------------------------------
// The search.

/// Applies call `c` of `h` to the reference: its result, and whether it was
/// let through as a read that a concurrent write tore (see [`may_tear`]),
/// in which case the result is the observed one and a read at the cursor
/// leaves the position where ours left it.
fn apply_call(reference: &mut Reference, h: &History, c: usize) -> (String, bool) {
    let call = &h.calls[c];
    let before = match call.op {
        Op::Read(fd, _) => reference.tell(fd).map(|pos| (fd, pos)),
        _ => None,
    };
    let result = reference.apply(&call.op);
    if result == call.result || !may_tear(h, c, &result) {
        return (result, false);
    }
    if let (Some((fd, pos)), Some(n)) = (before, read_count(&call.result)) {
        reference.set_position(fd, pos + n);
    }
    (call.result.clone(), true)
}

/// How many bytes a read's result says it read.
fn read_count(result: &str) -> Option<u64> {
    result.strip_prefix("n ")?.split(' ').next()?.parse().ok()
}

/// Whether call `c`, a read that the reference gives `result` and ours
/// something else (both successful), ran while another thread wrote
/// through another descriptor. Linux makes a read atomic with the writes
/// of its own file description only: a read through another one may see a
/// write in progress partly or not at all (its bytes torn, or the size
/// before it), which the context's lock hides and native threads see as
/// ours do. Such a read is let through with whatever it read.
fn may_tear(h: &History, c: usize, result: &str) -> bool {
    let call = &h.calls[c];
    let fd = match call.op {
        Op::Read(fd, _) | Op::Pread(fd, ..) => fd,
        _ => return false,
    };
    if read_count(result).is_none() || read_count(&call.result).is_none() {
        return false;
    }
    h.calls.iter().any(|d| {
        let writes = match &d.op {
            Op::Write(other, data) | Op::Pwrite(other, data, _) => {
                *other != fd && !data.0.is_empty()
            }
            Op::SetSize(other, _) => *other != fd,
            Op::Open { oflags, .. } => oflags.contains(Oflags::TRUNC),
            _ => false,
        };
        writes && d.thread != call.thread && d.inv < call.resp && call.inv < d.resp
    })
}

enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The search went past its budget of nodes or time.
    Undecided,
}

/// What the search learned, for the report.
#[derive(Default)]
struct Stats {
    nodes: u64,
    replays: u64,
    /// Nodes from which no order worked.
    dead_ends: u64,
    /// Reads let through as torn by a concurrent write (see [`may_tear`]).
    torn_reads: u64,
}

struct Search<'a> {
    world: &'a World,
    h: &'a History,
    dir: &'a Path,
    /// `before[i]`: the calls that returned before call `i` was made, and
    /// its thread's earlier calls.
    before: Vec<u128>,
    all: u128,
    /// The reference, and the calls that changed something it has had
    /// applied, in order.
    current: Option<(Reference, Vec<usize>)>,
    memo: HashSet<(u128, String)>,
    stats: Stats,
    node_limit: u64,
    deadline: Instant,
    /// The longest order the reference agreed with, and what it said next.
    deepest: Vec<usize>,
    disagreement: Option<String>,
}

impl<'a> Search<'a> {
    fn new(world: &'a World, h: &'a History, dir: &'a Path, deadline: Instant) -> Self {
        let n = h.calls.len();
        assert!(n <= 128, "at most 128 calls per history");
        let mut before = vec![0u128; n];
        for (i, c) in h.calls.iter().enumerate() {
            for (j, d) in h.calls.iter().enumerate() {
                let same_thread_earlier = d.thread == c.thread && d.inv < c.inv;
                if d.resp < c.inv || same_thread_earlier {
                    before[i] |= 1 << j;
                }
            }
        }
        let all = if n == 128 {
            u128::MAX
        } else {
            (1u128 << n) - 1
        };
        Search {
            world,
            h,
            dir,
            before,
            all,
            current: None,
            memo: HashSet::new(),
            stats: Stats::default(),
            node_limit: 300_000,
            deadline,
            deepest: Vec::new(),
            disagreement: None,
        }
    }

    /// The reference after `path`, replayed from scratch unless it is there
    /// (the calls of `path` that change something, in its order).
    fn at(&mut self, path: &[usize]) -> Result<&mut Reference, String> {
        let calls = &self.h.calls;
        let effective: Vec<usize> = path
            .iter()
            .copied()
            .filter(|&i| !calls[i].op.is_read_only())
            .collect();
        let fresh = match &self.current {
            Some((_, done)) => *done != effective,
            None => true,
        };
        if fresh {
            self.stats.replays += 1;
            self.current = None;
            let mut reference = Reference::new(self.world, self.h, self.dir)?;
            for &i in &effective {
                let (result, _) = apply_call(&mut reference, self.h, i);
                assert_eq!(
                    result, calls[i].result,
                    "the reference gave another result replaying the same order"
                );
            }
            self.current = Some((reference, effective));
        }
        Ok(&mut self.current.as_mut().unwrap().0)
    }

    fn note_disagreement(&mut self, path: &[usize], what: String) {
        if path.len() >= self.deepest.len() {
            self.deepest = path.to_vec();
            self.disagreement = Some(what);
        }
    }

    fn run(&mut self) -> Result<Verdict, String> {
        let mut path = Vec::new();
        match self.dfs(&mut path, 0)? {
            Some(true) => Ok(Verdict::Linearizable),
            Some(false) => Ok(Verdict::NotLinearizable),
            None => Ok(Verdict::Undecided),
        }
    }

    /// `Some(found)`, or `None` past the node budget.
    fn dfs(&mut self, path: &mut Vec<usize>, done: u128) -> Result<Option<bool>, String> {
        self.stats.nodes += 1;
        if self.stats.nodes > self.node_limit || Instant::now() > self.deadline {
            return Ok(None);
        }
        if done == self.all {
            let reference = self.at(path)?;
            let files = tree(&reference.dir);
            let stdout = reference.stdout();
            if files == self.h.files && stdout[..] == self.h.stdout[..] {
                return Ok(Some(true));
            }
            let what = format!(
                "after all calls the reference leaves\n{}stdout {:?}",
                show_tree(&files),
                Bytes(stdout.to_vec())
            );
            self.note_disagreement(path, what);
            return Ok(Some(false));
        }
        // stdout only grows, and only through the descriptor that is it
        // (fd 1, unless renumbered; the generator never touches fd 2, the
        // only other like it): once none is left, what is missing stays so.
        let observed = self.h.stdout.len();
        let reference = self.at(path)?;
        if reference.stdout().len() < observed && !reference.has_stdout() {
            let what = format!(
                "stdout is closed, and the reference's is {:?}",
                Bytes(reference.stdout().to_vec())
            );
            self.note_disagreement(path, what);
            self.stats.dead_ends += 1;
            return Ok(Some(false));
        }
        // Memoized only once some node has failed: until then the search
        // has gone straight down, and a fingerprint costs more than a call.
        if self.stats.dead_ends > 0 {
            let fingerprint = self.at(path)?.fingerprint();
            if !self.memo.insert((done, fingerprint)) {
                return Ok(Some(false));
            }
        }
        // Calls that may come next: those that change nothing first (one
        // that agrees with the reference is taken for good, see below),
        // then those that only move a position (undone without a replay
        // if the reference disagrees), then writes whose bytes would land
        // where they are at the end, then the others; each kind in the
        // order the calls were made.
        let candidates: Vec<usize> = (0..self.h.calls.len())
            .filter(|&i| done & (1 << i) == 0 && self.before[i] & !done == 0)
            .collect();
        let h = self.h;
        let reference = self.at(path)?;
        let mut keys = Vec::with_capacity(candidates.len());
        for &i in &candidates {
            let op = &h.calls[i].op;
            let class = if op.is_read_only() {
                0
            } else if op.moves_only().is_some() {
                1
            } else if reference.lands_as_observed(op, &h.files) {
                2
            } else {
                3
            };
            keys.push((class, h.calls[i].inv));
        }
        let mut keyed: Vec<_> = keys.into_iter().zip(candidates).collect();
        keyed.sort();
        let candidates = keyed.into_iter().map(|(_, i)| i);
        for c in candidates {
            let call = &self.h.calls[c];
            let read_only = call.op.is_read_only();
            let reference = self.at(path)?;
            // Where a call that only moves a position leaves it from.
            let undo = match call.op.moves_only() {
                Some(fd) if !read_only => reference.tell(fd).map(|pos| (fd, pos)),
                _ => None,
            };
            let (result, torn) = apply_call(reference, h, c);
            let stdout = reference.stdout();
            if torn {
                self.stats.torn_reads += 1;
            }
            let current = self.current.as_mut().unwrap();
            if !read_only {
                current.1.push(c);
            }
            let stdout_ok = self.h.stdout.starts_with(&stdout);
            if result == call.result && stdout_ok {
                path.push(c);
                let found = self.dfs(path, done | 1 << c)?;
                path.pop();
                match found {
                    // A call that changes nothing, placed as early as it
                    // may be: any order that places it later gives the same
                    // results with it here, so there is no other to try.
                    Some(false) if read_only => return Ok(Some(false)),
                    Some(false) => {}
                    found => return Ok(found),
                }
            } else {
                if let Some((fd, pos)) = undo {
                    current.0.set_position(fd, pos);
                    current.1.pop();
                }
                let what = if stdout_ok {
                    format!(
                        "next, thread {} {:?}: the reference gives {result:?}, ours gave {:?}",
                        call.thread, call.op, call.result
                    )
                } else {
                    format!(
                        "next, thread {} {:?}: the reference's stdout becomes {:?}",
                        call.thread,
                        call.op,
                        Bytes(stdout.to_vec())
                    )
                };
                self.note_disagreement(path, what);
            }
        }
        self.stats.dead_ends += 1;
        Ok(Some(false))
    }
}

// ---------------------------------------------------------------------------
// Driving and reporting.

/// Most time one search may take (then its history is undecided).
const SEARCH_TIME: Duration = Duration::from_secs(10);

struct Settings {
    seconds: f64,
    single: Option<u64>,
    base: u64,
    keep_going: bool,
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value} is not a number")))
}

fn settings() -> Settings {
    let seconds = std::env::var("WASI_LIN_SECONDS")
        .ok()
        .map(|s| s.trim().parse().expect("WASI_LIN_SECONDS is a number"))
        .unwrap_or(20.0);
    let base = match std::env::var("WASI_LIN_BASE").ok().as_deref() {
        Some("random") => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            Rng::new(t.as_nanos() as u64 ^ u64::from(std::process::id())).next() >> 16
        }
        Some(_) => env_u64("WASI_LIN_BASE").unwrap(),
        None => 0x5EED_0000,
    };
    Settings {
        seconds,
        single: env_u64("WASI_LIN_SEED"),
        base,
        keep_going: std::env::var_os("WASI_LIN_KEEP_GOING").is_some_and(|v| v != "0"),
    }
}

fn threads_host() -> WasiThreads<()> {
    let engine = wasmtime::Engine::new(&engine_config()).unwrap();
    let module = compile(&engine, b"(module)").unwrap();
    WasiThreads::new(&engine, &module).unwrap()
}

/// The failure report: everything needed to understand and rerun it.
fn report(spec: &Spec, h: &History, search: &Search<'_>, verdict: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n=== history seed {} ({:#x}) is {verdict} ({} nodes, {} replays)",
        spec.seed, spec.seed, search.stats.nodes, search.stats.replays
    );
    let _ = writeln!(
        out,
        "rerun it (it is a race: the seed repeats until it fails or the budget ends):\n  \
         WASI_LIN_SEED={} cargo test -p wasi-threads-host --test wasi_linearizable -- --nocapture",
        spec.seed
    );
    let _ = writeln!(
        out,
        "kind: {}; memory: {}",
        spec.kind,
        if spec.shared_memory {
            "shared"
        } else {
            "unshared"
        }
    );
    let _ = writeln!(out, "world:");
    for d in &spec.world.dirs {
        let _ = writeln!(out, "  {d}/");
    }
    for (name, bytes) in &spec.world.files {
        let _ = writeln!(out, "  {name}: {bytes:?}");
    }
    let _ = writeln!(out, "setup (one thread, before the others):");
    for (op, result) in &h.setup {
        let _ = writeln!(out, "  {op:?} => {result}");
    }
    let threads = h.calls.iter().map(|c| c.thread).max().map_or(0, |t| t + 1);
    for t in 0..threads {
        let _ = writeln!(out, "thread {t}: [invoked, returned]");
        for (i, c) in h.calls.iter().enumerate().filter(|(_, c)| c.thread == t) {
            let _ = writeln!(
                out,
                "  #{i:<3} [{:>4}, {:>4}] {:?} => {}",
                c.inv, c.resp, c.op, c.result
            );
        }
    }
    let _ = writeln!(out, "observed at the end:\n{}", show_tree(&h.files));
    let _ = writeln!(out, "  stdout {:?}", Bytes(h.stdout.clone()));
    let _ = writeln!(
        out,
        "longest order the reference agreed with ({} of {} calls): {:?}",
        search.deepest.len(),
        h.calls.len(),
        search.deepest
    );
    if let Some(what) = &search.disagreement {
        let _ = writeln!(out, "{what}");
    }
    out
}

#[derive(Default)]
struct Totals {
    histories: u64,
    calls: u64,
    nodes: u64,
    replays: u64,
    failures: u64,
    undecided: u64,
    failed_seeds: Vec<u64>,
    torn_reads: u64,
    running: Duration,
    checking: Duration,
}

/// Runs one history on our host and checks it; the failure report, if any.
fn check_one(
    seed: u64,
    deadline: Instant,
    threads: &WasiThreads<()>,
    totals: &mut Totals,
    tamper: impl FnOnce(&mut History),
) -> Option<String> {
    let spec = generate(seed);
    let ours = scratch("ours");
    let theirs = scratch("reference");
    let started = Instant::now();
    let mut h = run_ours(&spec, threads, &ours);
    totals.running += started.elapsed();
    tamper(&mut h);
    let started = Instant::now();
    let mut search = Search::new(&spec.world, &h, &theirs, deadline);
    let verdict = search.run();
    totals.checking += started.elapsed();
    if std::env::var_os("WASI_LIN_VERBOSE").is_some() {
        eprintln!(
            "seed {seed:#x} {}: {} calls, {} nodes, {} replays, {:?}",
            spec.kind,
            h.calls.len(),
            search.stats.nodes,
            search.stats.replays,
            started.elapsed()
        );
    }
    totals.histories += 1;
    totals.calls += h.calls.len() as u64;
    totals.nodes += search.stats.nodes;
    totals.replays += search.stats.replays;
    totals.torn_reads += search.stats.torn_reads;
    let failure = match verdict {
        Ok(Verdict::Linearizable) if std::env::var_os("WASI_LIN_SHOW").is_some() => {
            eprintln!("{}", report(&spec, &h, &search, "linearizable"));
            None
        }
        Ok(Verdict::Linearizable) => None,
        Ok(Verdict::NotLinearizable) => {
            totals.failures += 1;
            totals.failed_seeds.push(seed);
            Some(report(&spec, &h, &search, "NOT LINEARIZABLE"))
        }
        Ok(Verdict::Undecided) => {
            totals.undecided += 1;
            eprintln!(
                "{}",
                report(&spec, &h, &search, "undecided (search budget spent)")
            );
            None
        }
        Err(setup) => {
            totals.failures += 1;
            totals.failed_seeds.push(seed);
            Some(format!(
                "{}{setup}\n",
                report(&spec, &h, &search, "NOT LINEARIZABLE (setup)")
            ))
        }
    };
    let _ = std::fs::remove_dir_all(&ours);
    let _ = std::fs::remove_dir_all(&theirs);
    failure
}

#[test]
fn concurrent_wasi_calls_are_linearizable() {
    let settings = settings();
    let threads = threads_host();
    let budget = Duration::from_secs_f64(settings.seconds);
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut first_failure = None;
    let mut next = settings.base;
    let mut time_to_first = None;
    while started.elapsed() < budget {
        let seed = settings.single.unwrap_or(next);
        next = next.wrapping_add(1);
        let deadline = Instant::now() + SEARCH_TIME;
        if let Some(failure) = check_one(seed, deadline, &threads, &mut totals, |_| {}) {
            eprintln!(
                "{failure}(found after {:.1} s, history {} of this run)",
                started.elapsed().as_secs_f64(),
                totals.histories
            );
            time_to_first.get_or_insert((started.elapsed(), totals.histories));
            first_failure.get_or_insert(failure);
            if !settings.keep_going {
                break;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let base = match settings.single {
        Some(seed) => format!("seed {seed} repeated"),
        None => format!("seeds {:#x}..{:#x}", settings.base, next),
    };
    eprintln!(
        "wasi_linearizable: {} histories ({base}), {} calls, {} linearization nodes explored, \
         {} replays, {} failures, {} undecided, {} torn reads let through, in {elapsed:.1} s ({:.1} histories/s; \
         {:.1} s running them, {:.1} s checking)",
        totals.histories,
        totals.calls,
        totals.nodes,
        totals.replays,
        totals.failures,
        totals.undecided,
        totals.torn_reads,
        totals.histories as f64 / elapsed.max(1e-9),
        totals.running.as_secs_f64(),
        totals.checking.as_secs_f64(),
    );
    if let Some((after, histories)) = time_to_first {
        eprintln!(
            "wasi_linearizable: first failure after {:.1} s, {histories} histories; \
             failing seeds {:?}",
            after.as_secs_f64(),
            totals.failed_seeds
        );
    }
    assert!(totals.histories > 0, "no history was checked");
    if let Some(failure) = first_failure {
        panic!("a history is not linearizable:{failure}");
    }
}

/// The check is not vacuous: a history whose observations no order explains
/// (a byte of the final files changed, or a read's result) is rejected, and
/// one run on a single thread is accepted.
#[test]
fn the_check_rejects_a_tampered_history() {
    let threads = threads_host();
    let mut totals = Totals::default();
    // A file no call made, in the final state.
    let failure = check_one(
        0x7A3F,
        Instant::now() + SEARCH_TIME,
        &threads,
        &mut totals,
        |h| {
            h.files.push(("zz".into(), Node::File(b"!".to_vec())));
        },
    );
    assert!(failure.is_some(), "a file no call made was accepted");
    // A position a seek or tell returned, changed (in the first history
    // that has one).
    let mut changed = false;
    for seed in 0x5EED_0000.. {
        let failure = check_one(
            seed,
            Instant::now() + SEARCH_TIME,
            &threads,
            &mut totals,
            |h| {
                if let Some(c) = h.calls.iter_mut().find(|c| c.result.starts_with("pos ")) {
                    c.result.push('0');
                    changed = true;
                }
            },
        );
        if changed {
            assert!(failure.is_some(), "a changed position was accepted");
            break;
        }
    }
    // Untouched, the same kind of history passes.
    assert!(
        check_one(
            0x7A3F,
            Instant::now() + SEARCH_TIME,
            &threads,
            &mut totals,
            |_| {}
        )
        .is_none()
    );
}
