//! WASI preview1 shared by every thread of a program.
//!
//! `wasmtime-wasi`'s [`WasiP1Ctx`] is `Send` but not `Sync` and every call
//! takes `&mut`, so [`SharedWasi`] keeps the one context (one fd table) behind
//! a lock that every thread's store data points to. Calls that can block are
//! raced against the program's [`StopSignal`], so the supervisor can end a
//! thread stuck in, say, a read of stdin; sleeps and `sched_yield` never take
//! the lock at all.

use crate::stop::{StopSignal, Stopped};
use crate::WasiThreads;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::Result;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p1::types;
use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1;
use wiggle::{GuestMemory, GuestPtr};

/// One WASI preview1 context shared by all threads of a program. Cloning it
/// is cheap and every clone sees the same descriptors, preopens, args and
/// environment; put one in your store data and let `T: Clone` hand it to
/// every spawned thread.
#[derive(Clone)]
pub struct SharedWasi {
    ctx: Arc<Mutex<WasiP1Ctx>>,
    stop: StopSignal,
    hostcall_fuel: usize,
}

impl std::fmt::Debug for SharedWasi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWasi").finish_non_exhaustive()
    }
}

impl SharedWasi {
    /// Shares `ctx` among the threads of the program `threads` will run.
    pub fn new<T: Clone + Send + 'static>(ctx: WasiP1Ctx, threads: &WasiThreads<T>) -> Self {
        Self::with_stop_signal(ctx, threads.stop_signal())
    }

    /// Shares `ctx`; blocking calls give up when `stop` fires.
    pub fn with_stop_signal(ctx: WasiP1Ctx, stop: StopSignal) -> Self {
        SharedWasi {
            ctx: Arc::new(Mutex::new(ctx)),
            stop,
            hostcall_fuel: usize::MAX,
        }
    }

    /// Runs `f` on the context. Holding it stalls every other thread's WASI
    /// calls, so keep `f` short.
    pub fn with_ctx<R>(&self, f: impl FnOnce(&mut WasiP1Ctx) -> R) -> R {
        f(&mut self.ctx.lock())
    }

    fn stopped(_: Stopped) -> types::Error {
        types::Error::trap(Stopped.into())
    }

    /// Sleeps for a poll that waits on clocks only, without the lock and
    /// interruptibly. Returns `None` if some subscription is not a clock.
    fn poll_clocks(
        &mut self,
        memory: &mut GuestMemory<'_>,
        subs: GuestPtr<types::Subscription>,
        events: GuestPtr<types::Event>,
        n: types::Size,
    ) -> Option<Result<types::Size, types::Error>> {
        let subs = subs.as_array(n);
        let mut clocks = Vec::with_capacity(n as usize);
        for sub in subs.iter() {
            let sub = match sub.and_then(|p| memory.read(p)) {
                Ok(sub) => sub,
                Err(e) => return Some(Err(e.into())),
            };
            match sub.u {
                types::SubscriptionU::Clock(clock) => clocks.push((sub.userdata, clock)),
                _ => return None,
            }
        }
        Some(self.sleep_on_clocks(memory, &clocks, events))
    }

    fn sleep_on_clocks(
        &mut self,
        memory: &mut GuestMemory<'_>,
        clocks: &[(types::Userdata, types::SubscriptionClock)],
        events: GuestPtr<types::Event>,
    ) -> Result<types::Size, types::Error> {
        // Absolute deadlines are on the context's own clocks (an embedder may
        // have replaced them); read them once, briefly holding the lock.
        let mut remaining = Vec::with_capacity(clocks.len());
        for (_, clock) in clocks {
            let absolute = clock
                .flags
                .contains(types::Subclockflags::SUBSCRIPTION_CLOCK_ABSTIME);
            let nanos = match clock.id {
                types::Clockid::Monotonic | types::Clockid::Realtime if absolute => {
                    let now = self.clock_time_get(memory, clock.id, 0)?;
                    clock.timeout.saturating_sub(now)
                }
                types::Clockid::Monotonic | types::Clockid::Realtime => clock.timeout,
                _ => return Err(types::Errno::Inval.into()),
            };
            remaining.push(nanos);
        }
        let shortest = remaining.iter().copied().min().unwrap_or(0);
        self.stop
            .sleep(Duration::from_nanos(shortest))
            .map_err(Self::stopped)?;
        let mut written: types::Size = 0;
        for ((userdata, _), nanos) in clocks.iter().zip(&remaining) {
            if *nanos > shortest {
                continue;
            }
            let slot = events.as_array(clocks.len() as u32).get(written);
            let slot = slot.ok_or(types::Errno::Inval)?;
            memory.write(
                slot,
                types::Event {
                    userdata: *userdata,
                    error: types::Errno::Success,
                    type_: types::Eventtype::Clock,
                    fd_readwrite: types::EventFdReadwrite {
                        flags: types::Eventrwflags::empty(),
                        nbytes: 0,
                    },
                },
            )?;
            written += 1;
        }
        Ok(written)
    }
}

/// Adds WASI preview1 (`wasi_snapshot_preview1`), backed by a [`SharedWasi`]
/// in each thread's store data, to `linker`.
pub fn add_to_linker<T: Send + 'static>(
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

    fn in_tokio<F: Future>(future: F) -> Result<F::Output> {
        Ok(wasmtime_wasi::runtime::in_tokio(future))
    }
}

/// Forwards calls that cannot block to the shared context under its lock.
macro_rules! forward {
    ($( fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty; )*) => {
        $(
            fn $name(&mut self, memory: &mut GuestMemory<'_> $(, $arg: $ty)*) -> $ret {
                let mut ctx = self.ctx.lock();
                ctx.set_hostcall_fuel(self.hostcall_fuel);
                ctx.$name(memory $(, $arg)*)
            }
        )*
    };
}

/// Forwards calls that may block, racing them against the stop signal.
macro_rules! forward_async {
    ($( fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty; )*) => {
        $(
            async fn $name(&mut self, memory: &mut GuestMemory<'_> $(, $arg: $ty)*) -> $ret {
                let ctx = self.ctx.clone();
                let fuel = self.hostcall_fuel;
                self.stop
                    .race(async move {
                        let mut ctx = ctx.lock();
                        ctx.set_hostcall_fuel(fuel);
                        ctx.$name(memory $(, $arg)*).await
                    })
                    .await
                    .map_err(SharedWasi::stopped)?
            }
        )*
    };
}

impl WasiSnapshotPreview1 for SharedWasi {
    fn set_hostcall_fuel(&mut self, fuel: usize) {
        self.hostcall_fuel = fuel;
    }

    forward! {
        fn args_get(argv: GuestPtr<GuestPtr<u8>>, argv_buf: GuestPtr<u8>) -> Result<(), types::Error>;
        fn args_sizes_get() -> Result<(types::Size, types::Size), types::Error>;
        fn environ_get(environ: GuestPtr<GuestPtr<u8>>, environ_buf: GuestPtr<u8>) -> Result<(), types::Error>;
        fn environ_sizes_get() -> Result<(types::Size, types::Size), types::Error>;
        fn clock_res_get(id: types::Clockid) -> Result<types::Timestamp, types::Error>;
        fn clock_time_get(id: types::Clockid, precision: types::Timestamp) -> Result<types::Timestamp, types::Error>;
        fn fd_allocate(fd: types::Fd, offset: types::Filesize, len: types::Filesize) -> Result<(), types::Error>;
        fn fd_fdstat_set_flags(fd: types::Fd, flags: types::Fdflags) -> Result<(), types::Error>;
        fn fd_fdstat_set_rights(fd: types::Fd, base: types::Rights, inheriting: types::Rights) -> Result<(), types::Error>;
        fn fd_prestat_get(fd: types::Fd) -> Result<types::Prestat, types::Error>;
        fn fd_prestat_dir_name(fd: types::Fd, path: GuestPtr<u8>, path_max_len: types::Size) -> Result<(), types::Error>;
        fn fd_tell(fd: types::Fd) -> Result<types::Filesize, types::Error>;
        fn proc_raise(sig: types::Signal) -> Result<(), types::Error>;
        fn random_get(buf: GuestPtr<u8>, buf_len: types::Size) -> Result<(), types::Error>;
        fn sock_accept(fd: types::Fd, flags: types::Fdflags) -> Result<types::Fd, types::Error>;
        fn sock_recv(fd: types::Fd, ri_data: types::IovecArray, ri_flags: types::Riflags) -> Result<(types::Size, types::Roflags), types::Error>;
        fn sock_send(fd: types::Fd, si_data: types::CiovecArray, si_flags: types::Siflags) -> Result<types::Size, types::Error>;
        fn sock_shutdown(fd: types::Fd, how: types::Sdflags) -> Result<(), types::Error>;
    }

    forward_async! {
        fn fd_advise(fd: types::Fd, offset: types::Filesize, len: types::Filesize, advice: types::Advice) -> Result<(), types::Error>;
        fn fd_close(fd: types::Fd) -> Result<(), types::Error>;
        fn fd_datasync(fd: types::Fd) -> Result<(), types::Error>;
        fn fd_fdstat_get(fd: types::Fd) -> Result<types::Fdstat, types::Error>;
        fn fd_filestat_get(fd: types::Fd) -> Result<types::Filestat, types::Error>;
        fn fd_filestat_set_size(fd: types::Fd, size: types::Filesize) -> Result<(), types::Error>;
        fn fd_filestat_set_times(fd: types::Fd, atim: types::Timestamp, mtim: types::Timestamp, fst_flags: types::Fstflags) -> Result<(), types::Error>;
        fn fd_read(fd: types::Fd, iovs: types::IovecArray) -> Result<types::Size, types::Error>;
        fn fd_pread(fd: types::Fd, iovs: types::IovecArray, offset: types::Filesize) -> Result<types::Size, types::Error>;
        fn fd_write(fd: types::Fd, ciovs: types::CiovecArray) -> Result<types::Size, types::Error>;
        fn fd_pwrite(fd: types::Fd, ciovs: types::CiovecArray, offset: types::Filesize) -> Result<types::Size, types::Error>;
        fn fd_renumber(from: types::Fd, to: types::Fd) -> Result<(), types::Error>;
        fn fd_seek(fd: types::Fd, offset: types::Filedelta, whence: types::Whence) -> Result<types::Filesize, types::Error>;
        fn fd_sync(fd: types::Fd) -> Result<(), types::Error>;
        fn fd_readdir(fd: types::Fd, buf: GuestPtr<u8>, buf_len: types::Size, cookie: types::Dircookie) -> Result<types::Size, types::Error>;
        fn path_create_directory(dirfd: types::Fd, path: GuestPtr<str>) -> Result<(), types::Error>;
        fn path_filestat_get(dirfd: types::Fd, flags: types::Lookupflags, path: GuestPtr<str>) -> Result<types::Filestat, types::Error>;
        fn path_filestat_set_times(dirfd: types::Fd, flags: types::Lookupflags, path: GuestPtr<str>, atim: types::Timestamp, mtim: types::Timestamp, fst_flags: types::Fstflags) -> Result<(), types::Error>;
        fn path_link(src_fd: types::Fd, src_flags: types::Lookupflags, src_path: GuestPtr<str>, target_fd: types::Fd, target_path: GuestPtr<str>) -> Result<(), types::Error>;
        fn path_open(dirfd: types::Fd, dirflags: types::Lookupflags, path: GuestPtr<str>, oflags: types::Oflags, base: types::Rights, inheriting: types::Rights, fdflags: types::Fdflags) -> Result<types::Fd, types::Error>;
        fn path_readlink(dirfd: types::Fd, path: GuestPtr<str>, buf: GuestPtr<u8>, buf_len: types::Size) -> Result<types::Size, types::Error>;
        fn path_remove_directory(dirfd: types::Fd, path: GuestPtr<str>) -> Result<(), types::Error>;
        fn path_rename(src_fd: types::Fd, src_path: GuestPtr<str>, dest_fd: types::Fd, dest_path: GuestPtr<str>) -> Result<(), types::Error>;
        fn path_symlink(src_path: GuestPtr<str>, dirfd: types::Fd, dest_path: GuestPtr<str>) -> Result<(), types::Error>;
        fn path_unlink_file(dirfd: types::Fd, path: GuestPtr<str>) -> Result<(), types::Error>;
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
        // A sleep must neither hold the context (stalling every other
        // thread's I/O) nor be deaf to the supervisor.
        if let Some(result) = self.poll_clocks(memory, subs, events, nsubscriptions) {
            return result;
        }
        let ctx = self.ctx.clone();
        let fuel = self.hostcall_fuel;
        self.stop
            .race(async move {
                let mut ctx = ctx.lock();
                ctx.set_hostcall_fuel(fuel);
                ctx.poll_oneoff(memory, subs, events, nsubscriptions).await
            })
            .await
            .map_err(SharedWasi::stopped)?
    }

    fn proc_exit(&mut self, _memory: &mut GuestMemory<'_>, status: types::Exitcode) -> wasmtime::Error {
        // No lock: another thread may hold the context while blocked, and
        // exiting must not wait for it.
        if status >= 126 {
            return wasmtime::Error::msg("exit with invalid exit status outside of [0..126)");
        }
        wasmtime_wasi::I32Exit(status as i32).into()
    }

    fn sched_yield(&mut self, _memory: &mut GuestMemory<'_>) -> Result<(), types::Error> {
        std::thread::yield_now();
        Ok(())
    }
}
