//! WASI preview1 shared by every thread of a program.
//!
//! `wasmtime-wasi`'s [`WasiP1Ctx`] is `Send` but not `Sync` and every call
//! takes `&mut`, so [`SharedWasi`] keeps the one context (one fd table) behind
//! a lock that every thread's store data points to. Calls that can block are
//! raced against the program's stop signal, so the supervisor can end a
//! thread stuck in one, and every wait for the lock heeds it too: a thread
//! that holds it while blocked (see below) stalls the threads that need the
//! context only until the program stops, and they then leave (within 2 ms).
//!
//! Nothing that can block for long holds the lock where this crate can help
//! it, and nothing that does not need the fd table takes it: sleeps,
//! `sched_yield` and `proc_exit` never take it; a read of (or poll on) a
//! [`SharedStdin`] waits for input before taking it; a write to a
//! [`SharedOutput`] (stdout, stderr) is handed to that output's pump without
//! taking it at all; the arguments and environment (fixed once the context
//! is built) are read out of it once; and its clocks and random generators
//! (the embedder's own, if it configured any) are moved out of it, behind
//! locks of their own held only while one is read, with forwarders left in
//! the context for its own use of the clocks. Every answer is the one the
//! context would give: the same objects, read through the same public host
//! calls `wasmtime-wasi`'s own preview1 functions use.
//!
//! Reads, writes, seeks and `fd_tell` of the files `path_open` opens do not
//! take it either: the host's `files` module keeps, beside the context,
//! each such file's host file, append flag and position, and the context
//! stays the one fd table (opening, closing, renumbering and flag changes
//! still go through it and update those entries under its lock). Nor do
//! `fd_filestat_get` of those files and of directories the host has found, and
//! `path_filestat_get` in those directories (its `stat` module, Linux: one
//! sandboxed `statx` each, where the context takes two).
//!
//! What still holds it: every other call on a descriptor, for the length of
//! the call, I/O included (`wasmtime-wasi` keeps the table private, so such
//! a call runs inside the locked context). None of those waits for another
//! party but the open of a FIFO, and that wait happens before the context
//! is taken (its `fifo` module, Linux): a thread opening a FIFO nobody
//! else opens holds nothing, and leaves when the program stops. Each call
//! answered beside the context, and what pins its answers to the
//! context's, is listed in `docs/file-layer.md`.
//!
//! No size or pointer the guest passes is trusted: the calls implemented
//! here check counts against the memory before they allocate or loop, and
//! the ones forwarded to `wasmtime-wasi` charge the store's host-call fuel
//! for what they copy.

use super::files::{At, Files};
use super::stdin::SharedStdin;
use super::stdio::{SharedOutput, WriteFailed};
use super::streams::Stdio;
use crate::program::stop::{StopSignal, Stopped};
use crate::schedule::Kind;
use crate::schedule::scheduler::Scheduler;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use wasmtime::Result;
use wasmtime_wasi::clocks::{WasiClocksCtx, WasiClocksCtxView};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p1::types;
use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1;
use wasmtime_wasi::random::WasiRandomCtx;
use wasmtime_wasi::{ResourceTable, WasiCtxBuilder, WasiView as _};
use wiggle::{GuestMemory, GuestPtr, GuestType};

/// Longest path `path_open` looks at before the context opens it (Linux's
/// `PATH_MAX`: longer ones fail with `ENAMETOOLONG` anyway).
#[cfg(target_os = "linux")]
const PATH_MAX: u32 = 4096;

/// Most bytes `random_get` asks the context for at once, so that a guest's
/// length never sizes a host allocation.
const RANDOM_CHUNK: u32 = 64 * 1024;

/// One WASI preview1 context shared by all threads of a program. Cloning it
/// is cheap and every clone sees the same descriptors, preopens, args and
/// environment; put one in your store data and let `T: Clone` hand it to
/// every spawned thread.
#[derive(Clone)]
pub struct SharedWasi {
    ctx: Arc<parking_lot::Mutex<WasiP1Ctx>>,
    /// The context's arguments and environment, read out of it so that
    /// `args_*` and `environ_*` need not take it; `None` if it would not
    /// give them (those calls then go to the context).
    cli: Arc<parking_lot::RwLock<Option<CliStrings>>>,
    /// The context's clocks, moved out of it so that reading them need not
    /// wait for the fd table; the context keeps forwarders to them.
    clocks: Arc<parking_lot::Mutex<Clocks>>,
    /// The context's random generators, moved out of it for `random_get`
    /// (the only call of the context that uses them); the context keeps
    /// fresh ones.
    random: Arc<parking_lot::Mutex<WasiRandomCtx>>,
    stop: StopSignal,
    hostcall_fuel: usize,
    stdin: Option<SharedStdin>,
    stdout: Option<SharedOutput>,
    stderr: Option<SharedOutput>,
    /// Bit `fd` is set once the guest closes or renumbers over fd 0, 1 or 2:
    /// from then on that fd is no longer the stream given here, and calls on
    /// it go through the context.
    stdio_moved: Arc<AtomicU8>,
    /// The open files whose reads, writes and position are handled beside
    /// the context, without its lock (see [`super::files`]).
    pub(crate) files: Arc<Files>,
    bypass: Bypass,
    /// In the schedule mode: sleeps are virtual and yields are scheduling
    /// points.
    scheduler: Option<Arc<Scheduler>>,
}

/// The calls [`SharedWasi`] answers beside the context for speed, each of
/// which can be routed back to the context (under its lock) to measure what
/// it gains: `WASI_THREADS_BYPASS_OFF` set to a comma-separated list of
/// `files`, `stat`, `readdir`, `clocks`, `random`, `cli`, or `all`, read
/// once per process. A benchmark knob (`docs/file-layer.md`); the answers
/// are the same either way. The paths that keep threads from stalling each
/// other (stdio, stdin, FIFO opens, sleeps) are not among them.
#[derive(Clone, Copy)]
struct Bypass(u8);

impl Bypass {
    const FILES: u8 = 1;
    const STAT: u8 = 2;
    const READDIR: u8 = 4;
    const CLOCKS: u8 = 8;
    const RANDOM: u8 = 16;
    const CLI: u8 = 32;

    fn from_env() -> Self {
        static ON: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
        Bypass(*ON.get_or_init(|| {
            let Some(off) = std::env::var_os("WASI_THREADS_BYPASS_OFF") else {
                return u8::MAX;
            };
            let mut on = u8::MAX;
            for name in off.to_string_lossy().split(',') {
                on &= !match name.trim() {
                    "files" => Self::FILES,
                    "stat" => Self::STAT,
                    "readdir" => Self::READDIR,
                    "clocks" => Self::CLOCKS,
                    "random" => Self::RANDOM,
                    "cli" => Self::CLI,
                    "all" => u8::MAX,
                    _ => 0,
                };
            }
            on
        }))
    }

    fn on(self, which: u8) -> bool {
        self.0 & which != 0
    }
}

/// The arguments and environment as the context gives them to the guest:
/// what `wasmtime-wasi`'s own `args_*` and `environ_*` read (through the same
/// public `wasi:cli/environment` host calls) and write, in the same way.
struct CliStrings {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl CliStrings {
    fn of(ctx: &mut WasiP1Ctx) -> Option<Self> {
        use wasmtime_wasi::cli::WasiCliView as _;
        use wasmtime_wasi::p2::bindings::cli::environment::Host as _;
        let mut cli = ctx.cli();
        Some(CliStrings {
            args: cli.get_arguments().ok()?,
            env: cli.get_environment().ok()?,
        })
    }

    fn args_sizes(&self) -> Result<(types::Size, types::Size), types::Error> {
        let num = self.args.len().try_into()?;
        // Each one `\0`-terminated.
        let len = self.args.iter().map(|a| a.len() + 1).sum::<usize>();
        Ok((num, len.try_into()?))
    }

    fn environ_sizes(&self) -> Result<(types::Size, types::Size), types::Error> {
        let num = self.env.len().try_into()?;
        // Each one `KEY=VALUE\0`.
        let len = self.env.iter().map(|(k, v)| k.len() + 1 + v.len() + 1);
        Ok((num, len.sum::<usize>().try_into()?))
    }

    fn write_args(
        &self,
        memory: &mut GuestMemory<'_>,
        mut argv: GuestPtr<GuestPtr<u8>>,
        mut buf: GuestPtr<u8>,
    ) -> Result<(), types::Error> {
        for arg in &self.args {
            memory.write(argv, buf)?;
            argv = argv.add(1)?;
            buf = write_bytes(memory, buf, arg.as_bytes())?;
            buf = write_byte(memory, buf, 0)?;
        }
        Ok(())
    }

    fn write_environ(
        &self,
        memory: &mut GuestMemory<'_>,
        mut environ: GuestPtr<GuestPtr<u8>>,
        mut buf: GuestPtr<u8>,
    ) -> Result<(), types::Error> {
        for (key, value) in &self.env {
            memory.write(environ, buf)?;
            environ = environ.add(1)?;
            buf = write_bytes(memory, buf, key.as_bytes())?;
            buf = write_byte(memory, buf, b'=')?;
            buf = write_bytes(memory, buf, value.as_bytes())?;
            buf = write_byte(memory, buf, 0)?;
        }
        Ok(())
    }
}

/// Writes `bytes` at `ptr`, as `wasmtime-wasi` writes strings out (the
/// whole range is checked before anything is written), and points past them.
fn write_bytes(
    memory: &mut GuestMemory<'_>,
    ptr: GuestPtr<u8>,
    bytes: &[u8],
) -> Result<GuestPtr<u8>, types::Error> {
    let len = u32::try_from(bytes.len())?;
    memory.copy_from_slice(bytes, ptr.as_array(len))?;
    Ok(ptr.add(len)?)
}

/// Writes one byte at `ptr`, as `wasmtime-wasi` writes a terminator, and
/// points past it.
fn write_byte(
    memory: &mut GuestMemory<'_>,
    ptr: GuestPtr<u8>,
    byte: u8,
) -> Result<GuestPtr<u8>, types::Error> {
    memory.write(ptr, byte)?;
    Ok(ptr.add(1)?)
}

/// The clocks of a context, with the (empty) resource table its clock host
/// calls take.
struct Clocks {
    clocks: WasiClocksCtx,
    table: ResourceTable,
}

impl Clocks {
    /// Moves `ctx`'s clocks out of it, leaving forwarders to them in their
    /// place: the context reads the same clocks as before (its own
    /// `poll_oneoff` deadlines, say), and [`SharedWasi`] reads them without
    /// the context's lock. The clocks are `Send` but not `Sync`, so they
    /// have a lock of their own, held only while one is read.
    fn move_out_of(ctx: &mut WasiP1Ctx) -> Arc<parking_lot::Mutex<Clocks>> {
        let clocks = Arc::new(parking_lot::Mutex::new(Clocks {
            clocks: WasiClocksCtx::default(),
            table: ResourceTable::new(),
        }));
        // Only a builder makes a `WasiClocksCtx` of clocks of one's own.
        let mut forwarders = WasiCtxBuilder::new();
        forwarders
            .wall_clock(ForwardWallClock(clocks.clone()))
            .monotonic_clock(ForwardMonotonicClock(clocks.clone()));
        let mut forwarders = forwarders.build();
        std::mem::swap(ctx.ctx().ctx.clocks(), forwarders.clocks());
        std::mem::swap(&mut clocks.lock().clocks, forwarders.clocks());
        clocks
    }

    fn view(&mut self) -> WasiClocksCtxView<'_> {
        WasiClocksCtxView {
            ctx: &mut self.clocks,
            table: &mut self.table,
        }
    }

    /// `clock_time_get`, as `wasmtime-wasi` answers it.
    fn time(&mut self, id: types::Clockid) -> Result<types::Timestamp, types::Error> {
        use wasmtime::error::Context as _;
        use wasmtime_wasi::p2::bindings::clocks::{monotonic_clock, wall_clock};
        Ok(match id {
            types::Clockid::Realtime => wall_clock::Host::now(&mut self.view())
                .context("failed to call `wall_clock::now`")
                .map_err(types::Error::trap)?
                .try_into()?,
            types::Clockid::Monotonic => monotonic_clock::Host::now(&mut self.view())
                .context("failed to call `monotonic_clock::now`")
                .map_err(types::Error::trap)?,
            types::Clockid::ProcessCputimeId | types::Clockid::ThreadCputimeId => {
                return Err(types::Errno::Badf.into());
            }
        })
    }

    /// `clock_res_get`, as `wasmtime-wasi` answers it.
    fn resolution(&mut self, id: types::Clockid) -> Result<types::Timestamp, types::Error> {
        use wasmtime::error::Context as _;
        use wasmtime_wasi::p2::bindings::clocks::{monotonic_clock, wall_clock};
        Ok(match id {
            types::Clockid::Realtime => wall_clock::Host::resolution(&mut self.view())
                .context("failed to call `wall_clock::resolution`")
                .map_err(types::Error::trap)?
                .try_into()?,
            types::Clockid::Monotonic => monotonic_clock::Host::resolution(&mut self.view())
                .context("failed to call `monotonic_clock::resolution`")
                .map_err(types::Error::trap)?,
            types::Clockid::ProcessCputimeId | types::Clockid::ThreadCputimeId => {
                return Err(types::Errno::Badf.into());
            }
        })
    }
}

/// The wall clock left in the context, reading the one moved out of it.
struct ForwardWallClock(Arc<parking_lot::Mutex<Clocks>>);

impl ForwardWallClock {
    fn read(
        &self,
        read: fn(
            &mut WasiClocksCtxView<'_>,
        )
            -> wasmtime::Result<wasmtime_wasi::p2::bindings::clocks::wall_clock::Datetime>,
    ) -> Duration {
        // The clocks' host calls never fail; the type allows it.
        read(&mut self.0.lock().view())
            .map(|t| Duration::new(t.seconds, t.nanoseconds))
            .unwrap_or_default()
    }
}

impl wasmtime_wasi::HostWallClock for ForwardWallClock {
    fn resolution(&self) -> Duration {
        use wasmtime_wasi::p2::bindings::clocks::wall_clock::Host;
        self.read(|view| view.resolution())
    }

    fn now(&self) -> Duration {
        use wasmtime_wasi::p2::bindings::clocks::wall_clock::Host;
        self.read(|view| view.now())
    }
}

/// The monotonic clock left in the context, reading the one moved out of it.
struct ForwardMonotonicClock(Arc<parking_lot::Mutex<Clocks>>);

impl wasmtime_wasi::HostMonotonicClock for ForwardMonotonicClock {
    fn resolution(&self) -> u64 {
        use wasmtime_wasi::p2::bindings::clocks::monotonic_clock::Host;
        // The clocks' host calls never fail; the type allows it.
        self.0.lock().view().resolution().unwrap_or_default()
    }

    fn now(&self) -> u64 {
        use wasmtime_wasi::p2::bindings::clocks::monotonic_clock::Host;
        self.0.lock().view().now().unwrap_or_default()
    }
}

/// While it lives, the context holds its own clocks and random generators
/// again (and the forwarders wait in the shared slot); dropping it, even in
/// a panic, moves whatever the context then holds back out.
struct PutBack<'a> {
    ctx: &'a mut WasiP1Ctx,
    clocks: parking_lot::MutexGuard<'a, Clocks>,
    random: parking_lot::MutexGuard<'a, WasiRandomCtx>,
}

impl<'a> PutBack<'a> {
    fn new(
        ctx: &'a mut WasiP1Ctx,
        clocks: parking_lot::MutexGuard<'a, Clocks>,
        random: parking_lot::MutexGuard<'a, WasiRandomCtx>,
    ) -> Self {
        let mut put_back = PutBack {
            ctx,
            clocks,
            random,
        };
        put_back.swap();
        put_back
    }

    fn swap(&mut self) {
        let view = self.ctx.ctx();
        std::mem::swap(view.ctx.clocks(), &mut self.clocks.clocks);
        std::mem::swap(view.ctx.random(), &mut self.random);
    }
}

impl Drop for PutBack<'_> {
    fn drop(&mut self) {
        self.swap();
    }
}

/// One subscription of a `poll_oneoff` that [`SharedWasi`] waits on itself.
enum Sub {
    Clock(types::Userdata, types::SubscriptionClock),
    Stdin(types::Userdata),
}

impl std::fmt::Debug for SharedWasi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWasi").finish_non_exhaustive()
    }
}

impl SharedWasi {
    /// Builds the context from `builder` with `stdio`'s streams (see
    /// [`Stdio`]), to be shared by the threads of the program whose stop
    /// signal is `stop`.
    pub(crate) fn build(
        mut builder: WasiCtxBuilder,
        stdio: Stdio,
        stop: StopSignal,
        scheduler: Option<Arc<Scheduler>>,
    ) -> Self {
        stdio.apply(&mut builder);
        let (stdin, stdout, stderr) = stdio.into_parts();
        let mut wasi = Self::with_stop_signal(builder.build_p1(), stop);
        wasi.scheduler = scheduler;
        wasi.stdin = stdin;
        wasi.stdout = stdout;
        wasi.stderr = stderr;
        wasi
    }

    /// Shares `ctx`; blocking calls give up when `stop` fires.
    pub(crate) fn with_stop_signal(mut ctx: WasiP1Ctx, stop: StopSignal) -> Self {
        let bypass = Bypass::from_env();
        let cli = bypass
            .on(Bypass::CLI)
            .then(|| CliStrings::of(&mut ctx))
            .flatten();
        SharedWasi {
            bypass,
            cli: Arc::new(parking_lot::RwLock::new(cli)),
            clocks: Clocks::move_out_of(&mut ctx),
            random: Arc::new(parking_lot::Mutex::new(std::mem::take(
                ctx.ctx().ctx.random(),
            ))),
            ctx: Arc::new(parking_lot::Mutex::new(ctx)),
            stop,
            hostcall_fuel: usize::MAX,
            stdin: None,
            stdout: None,
            stderr: None,
            stdio_moved: Arc::new(AtomicU8::new(0)),
            files: Arc::default(),
            scheduler: None,
        }
    }

    fn is_original(&self, fd: u32) -> bool {
        fd <= 2 && self.stdio_moved.load(Ordering::Acquire) & (1 << fd) == 0
    }

    /// The shared stdin, if `fd` is still it.
    fn stdin_at(&self, fd: types::Fd) -> Option<&SharedStdin> {
        let fd: u32 = fd.into();
        if fd != 0 || !self.is_original(fd) {
            return None;
        }
        self.stdin.as_ref()
    }

    /// The shared stdout or stderr, if `fd` is still it.
    fn output_at(&self, fd: types::Fd) -> Option<&SharedOutput> {
        let fd: u32 = fd.into();
        if !self.is_original(fd) {
            return None;
        }
        match fd {
            1 => self.stdout.as_ref(),
            2 => self.stderr.as_ref(),
            _ => None,
        }
    }

    /// Runs `f` on the context. Holding it stalls every other thread's WASI
    /// calls, so keep `f` short. It waits for the context like a guest
    /// thread's call does, but not for the program's stop: a thread blocked
    /// in a syscall while holding it (a slow disk, say) makes this wait
    /// until the syscall returns. `f` sees the context as it
    /// was built (the clocks and random generators the guest's calls use,
    /// which are kept outside it otherwise); whatever arguments,
    /// environment, clocks or generators it leaves in it are the guest's
    /// from then on.
    pub fn with_ctx<R>(&self, f: impl FnOnce(&mut WasiP1Ctx) -> R) -> R {
        let mut ctx = self.ctx.lock();
        // `f` may use any descriptor: hand them all back to the context,
        // positions included.
        self.files.release_all(&mut ctx);
        let result = {
            // `f` sees the context as it was built, its own clocks and
            // generators in it, and whatever it leaves there are the ones
            // used from then on.
            let put_back = PutBack::new(&mut ctx, self.clocks.lock(), self.random.lock());
            f(put_back.ctx)
        };
        // `f` may have replaced the context's arguments or environment.
        if self.bypass.on(Bypass::CLI) {
            *self.cli.write() = CliStrings::of(&mut ctx);
        }
        result
    }

    /// The context, once no other thread holds it, unless the program stops
    /// first. Taking a free context costs what `parking_lot`'s lock does (it
    /// is one). A taken one is waited for as `parking_lot` waits (spinning,
    /// then parked, handed the lock on release), so a contended fd table
    /// changes hands as it always did, but in slices of [`STOP_POLL`], each
    /// followed by a look at the stop signal: another thread may hold the
    /// context for as long as a syscall inside `wasmtime-wasi` blocks (a
    /// slow disk, or the open of a FIFO a guest renamed under the wait that
    /// [`super::fifo`] does outside the context), and a stopped program
    /// must not leave every other thread stuck behind it.
    fn lock(&self) -> Result<parking_lot::MutexGuard<'_, WasiP1Ctx>, types::Error> {
        if let Some(ctx) = self.ctx.try_lock() {
            return Ok(ctx);
        }
        loop {
            if self.stop.is_stopped() {
                return Err(Self::stopped(Stopped));
            }
            if let Some(ctx) = self.ctx.try_lock_for(STOP_POLL) {
                return Ok(ctx);
            }
        }
    }

    /// The directory behind `fd`, if it is one the context holds (found in
    /// its resource table once, then remembered beside it).
    #[cfg(target_os = "linux")]
    // As in the calls below: the lock is the fd table's serialisation, and
    // the future is driven on this guest thread.
    #[allow(clippy::await_holding_lock)]
    async fn dir_of(
        &self,
        memory: &mut GuestMemory<'_>,
        fd: types::Fd,
    ) -> Result<Option<wasmtime_wasi::filesystem::Dir>, types::Error> {
        if let Some(dir) = self.files.dir(fd) {
            return Ok(Some(dir));
        }
        let mut ctx = self.lock()?;
        let Some((dir, _)) = super::readdir::find_dir(&mut ctx, memory, fd).await else {
            return Ok(None);
        };
        self.files.found_dir(fd, dir.clone());
        Ok(Some(dir))
    }

    /// A path the host may look at before (or instead of) the context:
    /// one it can read and no longer than any the host resolves (copied
    /// before the context would charge the guest's fuel for it). `None`
    /// leaves it to the context to read, and to report.
    #[cfg(target_os = "linux")]
    fn short_path<'m>(
        memory: &'m GuestMemory<'_>,
        path: GuestPtr<str>,
    ) -> Option<std::borrow::Cow<'m, str>> {
        if path.len() > PATH_MAX {
            return None;
        }
        memory.as_cow_str(path).ok()
    }

    /// If the `path_open` with these arguments is of a FIFO and would wait
    /// for its other end, waits for it without the context (see
    /// [`super::fifo`]) and returns what keeps that end there: hold it
    /// across the context's open. `None` if there is nothing to wait for.
    #[cfg(target_os = "linux")]
    #[allow(clippy::too_many_arguments)]
    async fn wait_for_fifo(
        &self,
        memory: &mut GuestMemory<'_>,
        dirfd: types::Fd,
        dirflags: types::Lookupflags,
        path: GuestPtr<str>,
        oflags: types::Oflags,
        base: types::Rights,
        fdflags: types::Fdflags,
    ) -> Result<Option<super::fifo::Held>, types::Error> {
        let Some(end) = super::fifo::End::of(oflags, base, fdflags) else {
            return Ok(None);
        };
        let Some(dir) = self.dir_of(memory, dirfd).await? else {
            return Ok(None);
        };
        // The context refuses a write to a read-only directory at once.
        if end == super::fifo::End::Write && dir.perms.write_not_permitted() {
            return Ok(None);
        }
        let Some(path) = Self::short_path(memory, path) else {
            return Ok(None);
        };
        let follow = dirflags.contains(types::Lookupflags::SYMLINK_FOLLOW);
        super::fifo::wait_for_other_end(&dir.dir, &path, follow, end, &self.stop)
            .await
            .map_err(Self::stopped)
    }

    fn stopped(_: Stopped) -> types::Error {
        types::Error::trap(Stopped.into())
    }

    /// The subscriptions of a poll, if all are clocks or reads of the shared
    /// stdin: those are waited on here, without the lock. `None` means the
    /// context must do the poll (its other descriptors are always ready).
    fn plan_poll(
        &self,
        memory: &GuestMemory<'_>,
        subs: GuestPtr<types::Subscription>,
        n: types::Size,
    ) -> Result<Option<Vec<Sub>>, types::Error> {
        // The count is the guest's: check the whole array lies in memory
        // before sizing anything by it.
        check_array(memory, subs, n)?;
        let mut plan = Vec::with_capacity(n as usize);
        for sub in subs.as_array(n).iter() {
            let sub = memory.read(sub?)?;
            match sub.u {
                types::SubscriptionU::Clock(clock) => plan.push(Sub::Clock(sub.userdata, clock)),
                types::SubscriptionU::FdRead(read)
                    if self.stdin_at(read.file_descriptor).is_some() =>
                {
                    plan.push(Sub::Stdin(sub.userdata))
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(plan))
    }

    /// Waits for the first of `plan`'s clocks or stdin, interruptibly and
    /// without the lock, and writes the events that are due.
    async fn poll_planned(
        &mut self,
        memory: &mut GuestMemory<'_>,
        plan: &[Sub],
        events: GuestPtr<types::Event>,
    ) -> Result<types::Size, types::Error> {
        let started = Instant::now();
        let started_virtual = self.scheduler.as_ref().map(|s| s.now_ns());
        // Absolute deadlines are on the context's own clocks (an embedder may
        // have replaced them); read them once.
        let mut remaining = Vec::with_capacity(plan.len());
        for sub in plan {
            let nanos = match sub {
                Sub::Clock(_, clock) => {
                    let absolute = clock
                        .flags
                        .contains(types::Subclockflags::SUBSCRIPTION_CLOCK_ABSTIME);
                    match clock.id {
                        types::Clockid::Monotonic | types::Clockid::Realtime if absolute => {
                            let now = self.clock_time_get(memory, clock.id, 0)?;
                            Some(clock.timeout.saturating_sub(now))
                        }
                        types::Clockid::Monotonic | types::Clockid::Realtime => Some(clock.timeout),
                        _ => return Err(types::Errno::Inval.into()),
                    }
                }
                Sub::Stdin(_) => None,
            };
            remaining.push(nanos);
        }
        let shortest = remaining.iter().flatten().copied().min();
        let stdin = plan
            .iter()
            .any(|s| matches!(s, Sub::Stdin(_)))
            .then(|| self.stdin.clone())
            .flatten();
        let due = u32::try_from(plan.len()).map_err(|_| types::Errno::Inval)?;
        check_array(memory, events, due)?;
        match (&stdin, &self.scheduler) {
            (None, Some(scheduler)) => {
                // Virtual time: the scheduler runs the others meanwhile, or
                // jumps to the deadline.
                scheduler
                    .sleep(shortest.unwrap_or(0))
                    .map_err(|_| Self::stopped(Stopped))?;
            }
            (None, None) => {
                let nanos = shortest.unwrap_or(0);
                self.stop
                    .sleep(Duration::from_nanos(nanos))
                    .map_err(Self::stopped)?;
            }
            (Some(stdin), _) => {
                let timer = async {
                    match shortest {
                        Some(nanos) => tokio::time::sleep(Duration::from_nanos(nanos)).await,
                        None => std::future::pending().await,
                    }
                };
                self.stop
                    .race(first_of(stdin.readable(), timer))
                    .await
                    .map_err(Self::stopped)?;
            }
        }
        let elapsed = match (started_virtual, &self.scheduler) {
            (Some(then), Some(scheduler)) => scheduler.now_ns().saturating_sub(then),
            _ => started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64,
        };
        let available = stdin.as_ref().map(SharedStdin::buffered);
        let stdin_ready = stdin.is_some_and(|s| s.is_readable());
        let mut written: types::Size = 0;
        for (sub, nanos) in plan.iter().zip(&remaining) {
            let event = match (sub, nanos) {
                (Sub::Clock(userdata, _), Some(nanos))
                    if *nanos <= elapsed || Some(*nanos) == shortest && !stdin_ready =>
                {
                    types::Event {
                        userdata: *userdata,
                        error: types::Errno::Success,
                        type_: types::Eventtype::Clock,
                        fd_readwrite: types::EventFdReadwrite {
                            flags: types::Eventrwflags::empty(),
                            nbytes: 0,
                        },
                    }
                }
                (Sub::Stdin(userdata), _) if stdin_ready => types::Event {
                    userdata: *userdata,
                    error: types::Errno::Success,
                    type_: types::Eventtype::FdRead,
                    fd_readwrite: types::EventFdReadwrite {
                        flags: types::Eventrwflags::empty(),
                        nbytes: available.unwrap_or(0) as u64,
                    },
                },
                _ => continue,
            };
            let slot = events
                .as_array(due)
                .get(written)
                .ok_or(types::Errno::Inval)?;
            memory.write(slot, event)?;
            written += 1;
        }
        Ok(written)
    }
}

/// `fd` (0, 1 or 2) no longer is the stream [`SharedWasi`] was given; call
/// under the context's lock, in the call that changed it.
fn note_fd_replaced(moved: &AtomicU8, fd: types::Fd) {
    let fd: u32 = fd.into();
    if fd <= 2 {
        moved.fetch_or(1 << fd, Ordering::AcqRel);
    }
}

/// How long a thread waiting for the shared context goes without looking at
/// the stop signal: the most a stopped program's threads that wait for a
/// context held by a blocked thread take to leave.
const STOP_POLL: Duration = Duration::from_millis(2);

/// Checks that `n` elements at `ptr` lie within `memory`, without copying
/// them: a trap (as `wasmtime-wasi` and `wasmtime run` give) if they do not.
fn check_array<T: GuestType>(
    memory: &GuestMemory<'_>,
    ptr: GuestPtr<T>,
    n: u32,
) -> Result<(), types::Error> {
    let bytes = T::guest_size()
        .checked_mul(n)
        .ok_or(wiggle::GuestError::PtrOverflow)?;
    memory.as_slice(GuestPtr::<[u8]>::new((ptr.offset(), bytes)))?;
    Ok(())
}

/// The errno for a failed write to a [`SharedOutput`].
fn write_errno(failed: WriteFailed) -> types::Errno {
    #[cfg(unix)]
    if let Some(errno) = failed.raw.and_then(unix_errno) {
        return errno;
    }
    use std::io::ErrorKind;
    match failed.kind {
        ErrorKind::BrokenPipe => types::Errno::Pipe,
        ErrorKind::WouldBlock => types::Errno::Again,
        ErrorKind::StorageFull => types::Errno::Nospc,
        ErrorKind::FileTooLarge => types::Errno::Fbig,
        ErrorKind::QuotaExceeded => types::Errno::Dquot,
        ErrorKind::Interrupted => types::Errno::Intr,
        ErrorKind::InvalidInput => types::Errno::Inval,
        ErrorKind::PermissionDenied => types::Errno::Acces,
        ErrorKind::ConnectionReset => types::Errno::Connreset,
        _ => types::Errno::Io,
    }
}

/// The WASI errno for a Unix errno a write failed with, where they differ
/// from what `std::io::ErrorKind` can tell apart.
#[cfg(unix)]
fn unix_errno(raw: i32) -> Option<types::Errno> {
    Some(match raw {
        libc::EPIPE => types::Errno::Pipe,
        libc::EAGAIN => types::Errno::Again,
        libc::ENOSPC => types::Errno::Nospc,
        libc::EFBIG => types::Errno::Fbig,
        libc::EDQUOT => types::Errno::Dquot,
        libc::EBADF => types::Errno::Badf,
        libc::EINTR => types::Errno::Intr,
        libc::EINVAL => types::Errno::Inval,
        libc::EPERM => types::Errno::Perm,
        libc::EACCES => types::Errno::Acces,
        libc::ECONNRESET => types::Errno::Connreset,
        _ => return None,
    })
}

/// Resolves with whichever of two futures finishes first.
async fn first_of(
    a: impl std::future::Future<Output = ()>,
    b: impl std::future::Future<Output = ()>,
) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    std::future::poll_fn(|cx| {
        if a.as_mut().poll(cx).is_ready() || b.as_mut().poll(cx).is_ready() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// Adds WASI preview1 (`wasi_snapshot_preview1`), backed by a [`SharedWasi`]
/// in each thread's store data, to `linker`.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::Linker<T>,
    get: impl Fn(&mut T) -> &mut SharedWasi + Copy + Send + Sync + 'static,
) -> Result<()> {
    sync::add_wasi_snapshot_preview1_to_linker(linker, get)
}

mod sync {
    use std::future::Future;
    use wasmtime::Result;

    wiggle::wasmtime_integration!({
        witx: ["witx/wasi_snapshot_preview1.witx"],
        target: wasmtime_wasi::p1,
        block_on[in_tokio]: {
            wasi_snapshot_preview1::{
                fd_advise, fd_close, fd_datasync, fd_fdstat_get, fd_filestat_get, fd_filestat_set_size,
                fd_filestat_set_times, fd_read, fd_pread, fd_seek, fd_sync, fd_readdir, fd_write,
                fd_pwrite, poll_oneoff, path_create_directory, path_filestat_get,
                path_filestat_set_times, path_link, path_open, path_readlink, path_remove_directory,
                path_rename, path_symlink, path_unlink_file, fd_renumber
            }
        },
        errors: { errno => trappable Error },
    });

    /// Drives one WASI call's future on the calling guest thread. Most calls
    /// finish on their first poll (no I/O readiness to wait for, or blocking
    /// I/O done inline), and for those the runtime's `block_on` (entering
    /// it, a forced yield, a park and unpark) is pure overhead: poll once
    /// with the runtime as ambient context, and only block on it if the
    /// future is not done.
    fn in_tokio<F: Future>(future: F) -> Result<F::Output> {
        let mut future = std::pin::pin!(future);
        let first = wasmtime_wasi::runtime::with_ambient_tokio_runtime(|| {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            future.as_mut().poll(&mut cx)
        });
        Ok(match first {
            std::task::Poll::Ready(output) => output,
            std::task::Poll::Pending => wasmtime_wasi::runtime::in_tokio(future),
        })
    }
}

/// Forwards calls that cannot block to the shared context under its lock;
/// waiting for the lock gives up when the program stops.
macro_rules! forward {
    ($( fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty; )*) => {
        $(
            fn $name(&mut self, memory: &mut GuestMemory<'_> $(, $arg: $ty)*) -> $ret {
                let mut ctx = self.lock()?;
                ctx.set_hostcall_fuel(self.hostcall_fuel);
                ctx.$name(memory $(, $arg)*)
            }
        )*
    };
}

/// Runs one call on the locked context, racing the call against the stop
/// signal (waiting for the lock heeds it too); evaluates to the call's
/// result.
macro_rules! locked {
    ($self:ident, $ctx:ident => $call:expr) => {{
        match $self.lock() {
            Err(stopped) => Err(stopped),
            Ok(mut $ctx) => {
                $ctx.set_hostcall_fuel($self.hostcall_fuel);
                $self
                    .stop
                    .race($call)
                    .await
                    .unwrap_or_else(|stopped| Err(SharedWasi::stopped(stopped)))
            }
        }
    }};
}

/// A call done beside the context when `fd` is a file adopted by
/// [`super::files`] (`$file_call`, given the file as `$f`, is `None` when the
/// file is not one it handles), else the context's `$ctx_call` under its
/// lock. Under the lock `fd` is looked up again: a `path_open` may have
/// just made it.
macro_rules! file_or_ctx {
    ($self:ident, $fd:expr, |$f:ident| $file_call:expr, $ctx:ident => $ctx_call:expr) => {{
        match $self.files.get($fd).and_then(|$f| $file_call) {
            Some(done) => done,
            None => {
                let files = $self.files.clone();
                locked!($self, $ctx => async {
                    match files.get($fd).and_then(|$f| $file_call) {
                        Some(done) => done,
                        None => $ctx_call.await,
                    }
                })
            }
        }
    }};
}

/// Forwards calls that may block, racing them against the stop signal.
macro_rules! forward_async {
    ($( fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty; )*) => {
        $(
            async fn $name(&mut self, memory: &mut GuestMemory<'_> $(, $arg: $ty)*) -> $ret {
                locked!(self, ctx => ctx.$name(memory $(, $arg)*))
            }
        )*
    };
}

// Holding the context's (blocking) lock across an await is the point: the
// lock *is* the fd table's serialisation, and each call's future is driven on
// its own guest thread, so no executor thread is starved. The calls that can
// wait long are the ones that never hold it while waiting.
#[allow(clippy::await_holding_lock)]
impl WasiSnapshotPreview1 for SharedWasi {
    fn set_hostcall_fuel(&mut self, fuel: usize) {
        self.hostcall_fuel = fuel;
    }

    forward! {
        fn fd_allocate(fd: types::Fd, offset: types::Filesize, len: types::Filesize) -> Result<(), types::Error>;
        fn fd_fdstat_set_rights(fd: types::Fd, base: types::Rights, inheriting: types::Rights) -> Result<(), types::Error>;
        fn fd_prestat_get(fd: types::Fd) -> Result<types::Prestat, types::Error>;
        fn fd_prestat_dir_name(fd: types::Fd, path: GuestPtr<u8>, path_max_len: types::Size) -> Result<(), types::Error>;
        fn proc_raise(sig: types::Signal) -> Result<(), types::Error>;
        fn sock_accept(fd: types::Fd, flags: types::Fdflags) -> Result<types::Fd, types::Error>;
        fn sock_recv(fd: types::Fd, ri_data: types::IovecArray, ri_flags: types::Riflags) -> Result<(types::Size, types::Roflags), types::Error>;
        fn sock_send(fd: types::Fd, si_data: types::CiovecArray, si_flags: types::Siflags) -> Result<types::Size, types::Error>;
        fn sock_shutdown(fd: types::Fd, how: types::Sdflags) -> Result<(), types::Error>;
    }

    forward_async! {
        fn fd_advise(fd: types::Fd, offset: types::Filesize, len: types::Filesize, advice: types::Advice) -> Result<(), types::Error>;
        fn fd_datasync(fd: types::Fd) -> Result<(), types::Error>;
        fn fd_fdstat_get(fd: types::Fd) -> Result<types::Fdstat, types::Error>;
        fn fd_filestat_set_size(fd: types::Fd, size: types::Filesize) -> Result<(), types::Error>;
        fn fd_filestat_set_times(fd: types::Fd, atim: types::Timestamp, mtim: types::Timestamp, fst_flags: types::Fstflags) -> Result<(), types::Error>;
        fn fd_sync(fd: types::Fd) -> Result<(), types::Error>;
        fn path_create_directory(dirfd: types::Fd, path: GuestPtr<str>) -> Result<(), types::Error>;
        fn path_filestat_set_times(dirfd: types::Fd, flags: types::Lookupflags, path: GuestPtr<str>, atim: types::Timestamp, mtim: types::Timestamp, fst_flags: types::Fstflags) -> Result<(), types::Error>;
        fn path_link(src_fd: types::Fd, src_flags: types::Lookupflags, src_path: GuestPtr<str>, target_fd: types::Fd, target_path: GuestPtr<str>) -> Result<(), types::Error>;
        fn path_readlink(dirfd: types::Fd, path: GuestPtr<str>, buf: GuestPtr<u8>, buf_len: types::Size) -> Result<types::Size, types::Error>;
        fn path_remove_directory(dirfd: types::Fd, path: GuestPtr<str>) -> Result<(), types::Error>;
        fn path_rename(src_fd: types::Fd, src_path: GuestPtr<str>, dest_fd: types::Fd, dest_path: GuestPtr<str>) -> Result<(), types::Error>;
        fn path_symlink(src_path: GuestPtr<str>, dirfd: types::Fd, dest_path: GuestPtr<str>) -> Result<(), types::Error>;
        fn path_unlink_file(dirfd: types::Fd, path: GuestPtr<str>) -> Result<(), types::Error>;
    }

    async fn fd_filestat_get(
        &mut self,
        memory: &mut GuestMemory<'_>,
        fd: types::Fd,
    ) -> Result<types::Filestat, types::Error> {
        // One `statx`, without the context, of a file it is known to hold.
        #[cfg(target_os = "linux")]
        if self.bypass.on(Bypass::STAT)
            && let Some(stat) = self
                .files
                .host_file(fd)
                .and_then(|file| super::stat::fd_filestat_get(&file))
        {
            return Ok(stat);
        }
        locked!(self, ctx => ctx.fd_filestat_get(memory, fd))
    }

    async fn path_filestat_get(
        &mut self,
        memory: &mut GuestMemory<'_>,
        dirfd: types::Fd,
        flags: types::Lookupflags,
        path: GuestPtr<str>,
    ) -> Result<types::Filestat, types::Error> {
        // One resolution of the path, not the context's two.
        #[cfg(target_os = "linux")]
        if self.bypass.on(Bypass::STAT)
            && let Some(dir) = self.dir_of(memory, dirfd).await?
            && let Some(name) = Self::short_path(memory, path)
        {
            let follow = flags.contains(types::Lookupflags::SYMLINK_FOLLOW);
            if let Some(answer) = super::stat::path_filestat_get(&dir.dir, &name, follow) {
                return answer;
            }
        }
        locked!(self, ctx => ctx.path_filestat_get(memory, dirfd, flags, path))
    }

    async fn fd_readdir(
        &mut self,
        memory: &mut GuestMemory<'_>,
        fd: types::Fd,
        buf: GuestPtr<u8>,
        buf_len: types::Size,
        cookie: types::Dircookie,
    ) -> Result<types::Size, types::Error> {
        // The context's answer, without its `statx` of every entry.
        if !self.bypass.on(Bypass::READDIR) {
            return locked!(self, ctx => ctx.fd_readdir(memory, fd, buf, buf_len, cookie));
        }
        locked!(self, ctx => super::readdir::fd_readdir(&mut ctx, memory, fd, buf, buf_len, cookie))
    }

    async fn poll_oneoff(
        &mut self,
        memory: &mut GuestMemory<'_>,
        subs: GuestPtr<types::Subscription>,
        events: GuestPtr<types::Event>,
        nsubscriptions: types::Size,
    ) -> Result<types::Size, types::Error> {
        if nsubscriptions == 0 {
            return Err(types::Errno::Inval.into());
        }
        // A sleep or a wait for input must neither hold the context (stalling
        // every other thread's I/O) nor be deaf to the supervisor.
        if let Some(plan) = self.plan_poll(memory, subs, nsubscriptions)? {
            return self.poll_planned(memory, &plan, events).await;
        }
        let files = self.files.clone();
        locked!(self, ctx => async {
            // The context reads the positions of the files it polls.
            if !files.is_empty() {
                for sub in subs.as_array(nsubscriptions).iter() {
                    if let types::SubscriptionU::FdRead(rw) | types::SubscriptionU::FdWrite(rw) =
                        memory.read(sub?)?.u
                    {
                        files.sync_position(&mut ctx, rw.file_descriptor);
                    }
                }
            }
            ctx.poll_oneoff(memory, subs, events, nsubscriptions).await
        })
    }

    async fn path_open(
        &mut self,
        memory: &mut GuestMemory<'_>,
        dirfd: types::Fd,
        dirflags: types::Lookupflags,
        path: GuestPtr<str>,
        oflags: types::Oflags,
        base: types::Rights,
        inheriting: types::Rights,
        fdflags: types::Fdflags,
    ) -> Result<types::Fd, types::Error> {
        // A FIFO's open waits for its other end here, not in the context.
        #[cfg(target_os = "linux")]
        let _held = self
            .wait_for_fifo(memory, dirfd, dirflags, path, oflags, base, fdflags)
            .await?;
        let (files, bypass) = (self.files.clone(), self.bypass);
        locked!(self, ctx => async {
            // `None`: nothing is adopted.
            let before = bypass
                .on(Bypass::FILES)
                .then(|| Files::snapshot(&mut ctx))
                .flatten();
            let fd = ctx
                .path_open(memory, dirfd, dirflags, path, oflags, base, inheriting, fdflags)
                .await?;
            files.adopt(&mut ctx, before, fd, fdflags);
            Ok(fd)
        })
    }

    fn fd_fdstat_set_flags(
        &mut self,
        memory: &mut GuestMemory<'_>,
        fd: types::Fd,
        flags: types::Fdflags,
    ) -> Result<(), types::Error> {
        let mut ctx = self.lock()?;
        ctx.set_hostcall_fuel(self.hostcall_fuel);
        ctx.fd_fdstat_set_flags(memory, fd, flags)?;
        self.files.flags_set(fd, flags);
        Ok(())
    }

    async fn fd_seek(
        &mut self,
        memory: &mut GuestMemory<'_>,
        fd: types::Fd,
        offset: types::Filedelta,
        whence: types::Whence,
    ) -> Result<types::Filesize, types::Error> {
        file_or_ctx!(self, fd, |f| f.guest_seek(offset, whence),
            ctx => ctx.fd_seek(memory, fd, offset, whence))
    }

    fn fd_tell(
        &mut self,
        memory: &mut GuestMemory<'_>,
        fd: types::Fd,
    ) -> Result<types::Filesize, types::Error> {
        if let Some(done) = self.files.get(fd).and_then(|f| f.tell()) {
            return done;
        }
        let mut ctx = self.lock()?;
        match self.files.get(fd).and_then(|f| f.tell()) {
            Some(done) => done,
            None => {
                ctx.set_hostcall_fuel(self.hostcall_fuel);
                ctx.fd_tell(memory, fd)
            }
        }
    }

    async fn fd_pwrite(
        &mut self,
        memory: &mut GuestMemory<'_>,
        fd: types::Fd,
        ciovs: types::CiovecArray,
        offset: types::Filesize,
    ) -> Result<types::Size, types::Error> {
        let fuel = self.hostcall_fuel;
        let at = At::Offset(offset);
        file_or_ctx!(self, fd, |f| f.guest_write(memory, ciovs, at, fuel),
            ctx => ctx.fd_pwrite(memory, fd, ciovs, offset))
    }

    // Clocks, arguments and environment never need the fd table.

    fn clock_time_get(
        &mut self,
        memory: &mut GuestMemory<'_>,
        id: types::Clockid,
        precision: types::Timestamp,
    ) -> Result<types::Timestamp, types::Error> {
        if !self.bypass.on(Bypass::CLOCKS) {
            return self.lock()?.clock_time_get(memory, id, precision);
        }
        self.clocks.lock().time(id)
    }

    fn clock_res_get(
        &mut self,
        memory: &mut GuestMemory<'_>,
        id: types::Clockid,
    ) -> Result<types::Timestamp, types::Error> {
        if !self.bypass.on(Bypass::CLOCKS) {
            return self.lock()?.clock_res_get(memory, id);
        }
        self.clocks.lock().resolution(id)
    }

    fn args_get(
        &mut self,
        memory: &mut GuestMemory<'_>,
        argv: GuestPtr<GuestPtr<u8>>,
        argv_buf: GuestPtr<u8>,
    ) -> Result<(), types::Error> {
        if let Some(cli) = &*self.cli.read() {
            return cli.write_args(memory, argv, argv_buf);
        }
        self.lock()?.args_get(memory, argv, argv_buf)
    }

    fn args_sizes_get(
        &mut self,
        memory: &mut GuestMemory<'_>,
    ) -> Result<(types::Size, types::Size), types::Error> {
        if let Some(cli) = &*self.cli.read() {
            return cli.args_sizes();
        }
        self.lock()?.args_sizes_get(memory)
    }

    fn environ_get(
        &mut self,
        memory: &mut GuestMemory<'_>,
        environ: GuestPtr<GuestPtr<u8>>,
        environ_buf: GuestPtr<u8>,
    ) -> Result<(), types::Error> {
        if let Some(cli) = &*self.cli.read() {
            return cli.write_environ(memory, environ, environ_buf);
        }
        self.lock()?.environ_get(memory, environ, environ_buf)
    }

    fn environ_sizes_get(
        &mut self,
        memory: &mut GuestMemory<'_>,
    ) -> Result<(types::Size, types::Size), types::Error> {
        if let Some(cli) = &*self.cli.read() {
            return cli.environ_sizes();
        }
        self.lock()?.environ_sizes_get(memory)
    }

    fn random_get(
        &mut self,
        memory: &mut GuestMemory<'_>,
        buf: GuestPtr<u8>,
        buf_len: types::Size,
    ) -> Result<(), types::Error> {
        // `wasmtime-wasi` allocates `buf_len` random bytes before it checks
        // the buffer: check first, then fill it a bounded chunk at a time.
        check_array(memory, buf, buf_len)?;
        if !self.bypass.on(Bypass::RANDOM) {
            return self.lock()?.random_get(memory, buf, buf_len);
        }
        use wasmtime::error::Context as _;
        use wasmtime_wasi::p2::bindings::random::random::Host as _;
        let mut random = self.random.lock();
        let mut done = 0;
        while done < buf_len {
            let len = (buf_len - done).min(RANDOM_CHUNK);
            // As `wasmtime-wasi`'s `random_get`, on the generators moved out
            // of the context.
            let bytes = random
                .get_random_bytes(len.into())
                .context("failed to call `get-random-bytes`")
                .map_err(types::Error::trap)?;
            write_bytes(memory, buf.add(done)?, &bytes)?;
            done += len;
        }
        Ok(())
    }

    async fn fd_write(
        &mut self,
        memory: &mut GuestMemory<'_>,
        fd: types::Fd,
        ciovs: types::CiovecArray,
    ) -> Result<types::Size, types::Error> {
        if let Some(output) = self.output_at(fd) {
            // Straight to the output's pump, without the context: a stuck
            // reader must stall only this thread, and only until it stops.
            let output = output.clone();
            // As the context writes to a stream: the first non-empty
            // buffer, whole, its bytes charged to the host-call fuel.
            let buf = super::files::first_non_empty(memory, ciovs, self.hostcall_fuel)?;
            let bytes = memory.to_vec(buf)?;
            let n = bytes.len() as types::Size;
            if n == 0 {
                return Ok(0);
            }
            return match self.stop.race(output.write(bytes.into())).await {
                Ok(Ok(())) => Ok(n),
                Ok(Err(failed)) => Err(write_errno(failed).into()),
                Err(stopped) => Err(SharedWasi::stopped(stopped)),
            };
        }
        let fuel = self.hostcall_fuel;
        let at = At::Cursor;
        file_or_ctx!(self, fd, |f| f.guest_write(memory, ciovs, at, fuel),
            ctx => ctx.fd_write(memory, fd, ciovs))
    }

    async fn fd_read(
        &mut self,
        memory: &mut GuestMemory<'_>,
        fd: types::Fd,
        iovs: types::IovecArray,
    ) -> Result<types::Size, types::Error> {
        if let Some(stdin) = self.stdin_at(fd).cloned() {
            // Wait for input without the context, one reader at a time so
            // that the input this thread waited for is still there to read.
            let _turn = self
                .stop
                .race(stdin.turn())
                .await
                .map_err(SharedWasi::stopped)?;
            self.stop
                .race(stdin.readable())
                .await
                .map_err(SharedWasi::stopped)?;
            return locked!(self, ctx => ctx.fd_read(memory, fd, iovs));
        }
        let fuel = self.hostcall_fuel;
        file_or_ctx!(self, fd, |f| f.guest_read(memory, iovs, fuel), ctx => ctx.fd_read(memory, fd, iovs))
    }

    async fn fd_pread(
        &mut self,
        memory: &mut GuestMemory<'_>,
        fd: types::Fd,
        iovs: types::IovecArray,
        offset: types::Filesize,
    ) -> Result<types::Size, types::Error> {
        let fuel = self.hostcall_fuel;
        file_or_ctx!(self, fd, |f| f.guest_pread(memory, iovs, offset, fuel),
            ctx => ctx.fd_pread(memory, fd, iovs, offset))
    }

    async fn fd_close(
        &mut self,
        memory: &mut GuestMemory<'_>,
        fd: types::Fd,
    ) -> Result<(), types::Error> {
        let files = self.files.clone();
        let moved = self.stdio_moved.clone();
        // The fd table changes under the context's lock: so does what this
        // crate keeps of it, before any other thread can reuse `fd`.
        locked!(self, ctx => async {
            ctx.fd_close(memory, fd).await?;
            files.closed(fd);
            note_fd_replaced(&moved, fd);
            Ok(())
        })
    }

    async fn fd_renumber(
        &mut self,
        memory: &mut GuestMemory<'_>,
        from: types::Fd,
        to: types::Fd,
    ) -> Result<(), types::Error> {
        let files = self.files.clone();
        let moved = self.stdio_moved.clone();
        locked!(self, ctx => async {
            ctx.fd_renumber(memory, from, to).await?;
            if from != to {
                files.renumbered(from, to);
            }
            note_fd_replaced(&moved, to);
            note_fd_replaced(&moved, from);
            Ok(())
        })
    }

    fn proc_exit(
        &mut self,
        _memory: &mut GuestMemory<'_>,
        status: types::Exitcode,
    ) -> wasmtime::Error {
        // No lock: another thread may hold the context while blocked, and
        // exiting must not wait for it.
        if status >= 126 {
            return wasmtime::Error::msg("exit with invalid exit status outside of [0..126)");
        }
        wasmtime_wasi::I32Exit(status as i32).into()
    }

    fn sched_yield(&mut self, _memory: &mut GuestMemory<'_>) -> Result<(), types::Error> {
        match &self.scheduler {
            Some(scheduler) => scheduler
                .point(Kind::Yield)
                .map_err(|_| Self::stopped(Stopped)),
            None => {
                std::thread::yield_now();
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime_wasi::WasiCtxBuilder;

    fn ctx() -> WasiP1Ctx {
        WasiCtxBuilder::new()
            .args(&["prog", "", "ünï"])
            .env("A", "1")
            .env("EMPTY", "")
            .env("K", "v=w")
            .build_p1()
    }

    #[derive(Debug, Clone, Copy)]
    enum Call {
        ArgsSizes,
        EnvironSizes,
        /// `args_get(ptrs, buf)`
        Args(u32, u32),
        /// `environ_get(ptrs, buf)`
        Environ(u32, u32),
    }

    /// What `call` leaves in a 256-byte memory, and returns.
    fn run(call: Call, wasi: &mut impl WasiSnapshotPreview1) -> (Vec<u8>, String) {
        let mut bytes = vec![0xAAu8; 256];
        let memory = &mut GuestMemory::Unshared(&mut bytes);
        let result = match call {
            Call::ArgsSizes => wasi.args_sizes_get(memory).map(|s| format!("{s:?}")),
            Call::EnvironSizes => wasi.environ_sizes_get(memory).map(|s| format!("{s:?}")),
            Call::Args(p, b) => wasi
                .args_get(memory, GuestPtr::new(p), GuestPtr::new(b))
                .map(|()| String::new()),
            Call::Environ(p, b) => wasi
                .environ_get(memory, GuestPtr::new(p), GuestPtr::new(b))
                .map(|()| String::new()),
        };
        let result = result.unwrap_or_else(|e| match e.downcast() {
            Ok(errno) => format!("errno {errno:?}"),
            Err(trap) => format!("trap {trap}"),
        });
        (bytes, result)
    }

    /// The arguments and environment read once give the guest exactly what
    /// the context gives it: bytes, sizes, and errors (buffers running past
    /// the end of memory part-way through).
    #[test]
    fn args_and_environ_are_answered_as_the_context_answers() {
        let mut direct = ctx();
        let mut shared = SharedWasi::with_stop_signal(ctx(), StopSignal::new());
        let calls = [
            Call::ArgsSizes,
            Call::EnvironSizes,
            Call::Args(0, 64),
            Call::Environ(0, 64),
            Call::Args(0, 250),
            Call::Environ(0, 245),
            Call::Environ(248, 0),
        ];
        for call in calls {
            let expected = run(call, &mut direct);
            assert_eq!(run(call, &mut shared), expected, "{call:?}");
        }
        // They need not wait for the context.
        let lock = shared.ctx.clone();
        let held = lock.try_lock();
        assert!(held.is_some());
        assert_eq!(
            run(Call::Environ(0, 64), &mut shared),
            run(Call::Environ(0, 64), &mut direct)
        );
    }

    /// A thread waiting for the context held by another gives up when the
    /// program stops, and the context is free once its holder lets go.
    #[test]
    fn a_wait_for_the_context_gives_up_on_stop() {
        let stop = StopSignal::new();
        let shared = SharedWasi::with_stop_signal(ctx(), stop.clone());
        let held = shared.ctx.try_lock();
        assert!(held.is_some());
        let waiter = {
            let shared = shared.clone();
            std::thread::spawn(move || shared.lock().map(|_| ()).is_err())
        };
        std::thread::sleep(Duration::from_millis(50));
        stop.trigger();
        assert!(waiter.join().unwrap(), "the waiter took a held lock");
        drop(held);
        assert!(shared.ctx.try_lock().is_some());
    }

    /// A monotonic clock of an embedder's own: 1000, 2000, ... from `start`.
    struct Ticks(Arc<std::sync::atomic::AtomicU64>);

    impl wasmtime_wasi::HostMonotonicClock for Ticks {
        fn resolution(&self) -> u64 {
            42
        }
        fn now(&self) -> u64 {
            self.0.fetch_add(1000, Ordering::SeqCst) + 1000
        }
    }

    struct Fixed;

    impl wasmtime_wasi::HostWallClock for Fixed {
        fn resolution(&self) -> Duration {
            Duration::from_nanos(3)
        }
        fn now(&self) -> Duration {
            Duration::new(5, 7)
        }
    }

    fn clock_ctx(start: u64) -> WasiP1Ctx {
        WasiCtxBuilder::new()
            .monotonic_clock(Ticks(Arc::new(start.into())))
            .wall_clock(Fixed)
            .build_p1()
    }

    /// The clocks are read without the context's lock, and they are the
    /// context's own: an embedder's clocks, read in one sequence whether
    /// through `SharedWasi`, the context (its forwarders) or `with_ctx`, and
    /// replaced by `with_ctx` if it replaces them.
    #[test]
    fn clocks_are_the_contexts_own_and_read_without_its_lock() {
        use types::Clockid::*;
        let mut shared = SharedWasi::with_stop_signal(clock_ctx(0), StopSignal::new());
        let mut bytes = [0u8; 0];
        let memory = &mut GuestMemory::Unshared(&mut bytes);
        let lock = shared.ctx.clone();
        {
            let mut held = lock.try_lock().unwrap();
            assert_eq!(shared.clock_time_get(memory, Monotonic, 0).unwrap(), 1000);
            assert_eq!(
                shared.clock_time_get(memory, Realtime, 0).unwrap(),
                5_000_000_007
            );
            assert_eq!(shared.clock_res_get(memory, Realtime).unwrap(), 3);
            assert_eq!(shared.clock_res_get(memory, Monotonic).unwrap(), 42);
            let errno = |e: types::Error| e.downcast().ok();
            let cpu = shared.clock_time_get(memory, ProcessCputimeId, 0);
            assert_eq!(cpu.map_err(errno), Err(Some(types::Errno::Badf)));
            // The context reads the same clock.
            assert_eq!(held.clock_time_get(memory, Monotonic, 0).unwrap(), 2000);
            assert_eq!(held.clock_res_get(memory, Realtime).unwrap(), 3);
        }
        let in_ctx = shared.with_ctx(|ctx| {
            let mut bytes = [0u8; 0];
            let memory = &mut GuestMemory::Unshared(&mut bytes);
            ctx.clock_time_get(memory, Monotonic, 0).unwrap()
        });
        assert_eq!(in_ctx, 3000);
        assert_eq!(shared.clock_time_get(memory, Monotonic, 0).unwrap(), 4000);
        // An embedder replacing the clocks through `with_ctx`.
        shared.with_ctx(|ctx| {
            let mut other = WasiCtxBuilder::new();
            other.monotonic_clock(Ticks(Arc::new(1_000_000.into())));
            std::mem::swap(ctx.ctx().ctx.clocks(), other.build().clocks());
        });
        assert_eq!(
            shared.clock_time_get(memory, Monotonic, 0).unwrap(),
            1_001_000
        );
        let mut held = lock.try_lock().unwrap();
        assert_eq!(
            held.clock_time_get(memory, Monotonic, 0).unwrap(),
            1_002_000
        );
    }

    /// `random_get` draws from the context's own generators, without its
    /// lock, and `with_ctx` sees the same generators.
    #[test]
    fn random_comes_from_the_contexts_own_generator() {
        let ctx = || {
            WasiCtxBuilder::new()
                .secure_random(wasmtime_wasi::Deterministic::new((0..=250).collect()))
                .build_p1()
        };
        let draw = |wasi: &mut dyn FnMut(&mut GuestMemory<'_>)| {
            let mut bytes = vec![0u8; 100];
            wasi(&mut GuestMemory::Unshared(&mut bytes));
            bytes
        };
        let mut direct = ctx();
        let mut shared = SharedWasi::with_stop_signal(ctx(), StopSignal::new());
        let lock = shared.ctx.clone();
        let held = lock.try_lock();
        for _ in 0..3 {
            let expected = draw(&mut |m| direct.random_get(m, GuestPtr::new(4), 96).unwrap());
            let got = draw(&mut |m| shared.random_get(m, GuestPtr::new(4), 96).unwrap());
            assert_eq!(got, expected);
        }
        drop(held);
        let expected = draw(&mut |m| direct.random_get(m, GuestPtr::new(0), 16).unwrap());
        let got =
            shared.with_ctx(|ctx| draw(&mut |m| ctx.random_get(m, GuestPtr::new(0), 16).unwrap()));
        assert_eq!(got, expected);
    }
}
