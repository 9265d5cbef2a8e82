//! Reads and writes of open files without the shared context's lock.
//!
//! `wasmtime-wasi`'s preview1 layer keeps its fd table, and each file's
//! position and append flag, private, so every `fd_write` to a file went
//! through [`crate::SharedWasi`]'s one lock, `wiggle`'s async dispatch and
//! the p1 adapter, and, in append mode, a `statx` after every write to learn
//! the new position. [`Files`] keeps, beside the context, what a read or a
//! write of a file needs: the host file (the same `Arc<std::fs::File>` the
//! context's resource table holds), the append flag and the position. The
//! context stays the one fd table: a descriptor is *adopted* here when
//! `path_open` creates it (the open itself, rights and path resolution, are
//! the context's), and every call that could change what a descriptor is
//! (`fd_close`, `fd_renumber`, `fd_fdstat_set_flags`) still goes to the
//! context, and updates the entry here while holding the context's lock.
//! From then on the position lives here; the calls of the context that read
//! it (`poll_oneoff`) are handed it first ([`Files::sync_position`]), and
//! [`crate::SharedWasi::with_ctx`] gives every descriptor back
//! ([`Files::release_all`]).
//!
//! Every call does what `wasmtime-wasi` 48's p1 does on a file, syscall for
//! syscall where it matters: the first non-empty buffer only, `pwrite` /
//! `pread` at the position (or at the offset given), the position advanced
//! by what was transferred, errors mapped as it maps them, host-call fuel
//! charged as it charges. Two things differ, neither visible to the guest:
//!
//! - the position is the file description's own offset, as in a native
//!   program: a read or write at the position is a plain `read` / `write`,
//!   which the kernel serializes per file description as it does for
//!   native threads, so no lock of ours is held across the I/O, and threads
//!   writing one file scale as native ones do. `wasmtime-wasi` keeps the
//!   position in its table and does `pread` / `pwrite` at it (and never
//!   moves the offset), so the offset is set to its position when the
//!   descriptor is first used here, read back (`lseek(fd, 0, SEEK_CUR)`)
//!   when the context needs it, and a position the kernel cannot take (a
//!   seek past the file system's largest file, which the context allows)
//!   is kept here instead, with positional I/O at it as the context does;
//! - in append mode the file description is opened for append (`O_APPEND`,
//!   set when the descriptor is first used here) and a write is a plain
//!   `write`, which leaves the offset at the end of what was written;
//!   `wasmtime-wasi` does a `pwritev2(RWF_APPEND)` and a `statx` of the file
//!   after each write (the size then: the same value unless another writer
//!   got in between);
//! - the bytes go between the guest's memory and the kernel directly, with
//!   no copy and no buffer sized by the guest.
//!
//! Only regular files on Linux are adopted (checked on first use: for a
//! FIFO or a device the position means nothing and the context keeps it).
//!
//! How threads share one adopted descriptor (each operation at the position
//! one syscall; what the locks guard; the hand-back) is
//! [`super::open_file`]'s, model-checked in `tests/files_model.rs`; this
//! module keeps the table of them and reads the guest's iovecs.

pub(crate) use super::open_file::{At, OpenFile};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::future::Future as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p1::types;
use wiggle::{GuestError, GuestMemory, GuestPtr, GuestType};

/// Most resource-table entries scanned to find the file a `path_open` added:
/// past this many open resources, new descriptors stay with the context (so
/// a guest with thousands of open files does not pay a scan per open).
const MAX_SCAN: usize = 1024;

/// The open files adopted from the shared context, by guest fd.
#[derive(Default)]
pub(crate) struct Files {
    open: RwLock<HashMap<u32, Arc<OpenFile>, BuildHasherDefault<FdHasher>>>,
    /// The directories found behind descriptors, by guest fd, for
    /// `path_open`'s look at what a path names before the context opens it
    /// (see [`super::fifo`]); kept as exact as `open` by the same calls.
    dirs: Mutex<HashMap<u32, wasmtime_wasi::filesystem::Dir, BuildHasherDefault<FdHasher>>>,
}

/// Hashes a descriptor number with one multiplication (SipHash showed in
/// the profile of a write; the numbers are the guest's, but a table keyed
/// by them is only as large as what the context let it open).
#[derive(Default)]
struct FdHasher(u64);

impl Hasher for FdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The raw addresses of the file descriptors of the context's open files.
pub(crate) type Snapshot = Option<std::collections::HashSet<usize>>;

impl Files {
    /// The adopted file at `fd`, if any.
    pub(crate) fn get(&self, fd: types::Fd) -> Option<Arc<OpenFile>> {
        let open = self.open.read();
        if open.is_empty() {
            return None;
        }
        open.get(&u32::from(fd)).cloned()
    }

    /// The files the context holds now, to tell which one a `path_open`
    /// adds; `None` if there are too many to scan. Call with the context's
    /// lock held, as every change here is made.
    pub(crate) fn snapshot(ctx: &mut WasiP1Ctx) -> Snapshot {
        if !cfg!(target_os = "linux") {
            return None;
        }
        let mut files = std::collections::HashSet::new();
        scan(ctx, |file| {
            files.insert(Arc::as_ptr(file) as usize);
        })?;
        Some(files)
    }

    /// Adopts `fd`, just opened by the context's `path_open` with `fdflags`,
    /// if it is a file the context did not hold at `before`.
    pub(crate) fn adopt(
        &self,
        ctx: &mut WasiP1Ctx,
        before: Snapshot,
        fd: types::Fd,
        fdflags: types::Fdflags,
    ) {
        let Some(before) = before else { return };
        let mut added = None;
        let mut count = 0;
        let scanned = scan(ctx, |file| {
            if !before.contains(&(Arc::as_ptr(file) as usize)) {
                added = Some(file.clone());
                count += 1;
            }
        });
        // Exactly one new file, or the context did something else.
        let (Some(()), Some(file), 1) = (scanned, added, count) else {
            return;
        };
        let entry = Arc::new(OpenFile::new(
            file,
            fdflags.contains(types::Fdflags::APPEND),
        ));
        self.open.write().insert(fd.into(), entry);
    }

    /// The host file behind `fd`, if it is an adopted file or a directory
    /// found earlier.
    // Used where the host resolves paths itself (Linux).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn host_file(&self, fd: types::Fd) -> Option<Arc<std::fs::File>> {
        if let Some(open) = self.get(fd) {
            return Some(open.file().clone());
        }
        self.dirs.lock().get(&u32::from(fd)).map(|d| d.dir.clone())
    }

    /// The directory found behind `fd` earlier, if any.
    // Used where the host resolves paths itself (Linux).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn dir(&self, fd: types::Fd) -> Option<wasmtime_wasi::filesystem::Dir> {
        self.dirs.lock().get(&u32::from(fd)).cloned()
    }

    /// `fd` is the directory `dir` (found under the context's lock).
    // Used where the host resolves paths itself (Linux).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn found_dir(&self, fd: types::Fd, dir: wasmtime_wasi::filesystem::Dir) {
        let mut dirs = self.dirs.lock();
        // Bounded as the scans that find them are.
        if dirs.len() < MAX_SCAN {
            dirs.insert(fd.into(), dir);
        }
    }

    /// `fd` was closed in the context.
    pub(crate) fn closed(&self, fd: types::Fd) {
        self.dirs.lock().remove(&u32::from(fd));
        if let Some(file) = self.open.write().remove(&u32::from(fd)) {
            let _ = file.release();
        }
    }

    /// `from` was renumbered to `to` in the context.
    pub(crate) fn renumbered(&self, from: types::Fd, to: types::Fd) {
        {
            let mut dirs = self.dirs.lock();
            dirs.remove(&u32::from(to));
            if let Some(dir) = dirs.remove(&u32::from(from)) {
                dirs.insert(to.into(), dir);
            }
        }
        let mut open = self.open.write();
        if let Some(old) = open.remove(&u32::from(to)) {
            let _ = old.release();
        }
        if let Some(file) = open.remove(&u32::from(from)) {
            // A new entry: a thread that looked `from` up before must not
            // write through it after the renumber returned.
            open.insert(to.into(), Arc::new(file.renumber()));
        }
    }

    /// The context has set `fd`'s flags to `flags`.
    pub(crate) fn flags_set(&self, fd: types::Fd, flags: types::Fdflags) {
        if let Some(file) = self.get(fd) {
            file.set_append(flags.contains(types::Fdflags::APPEND));
        }
    }

    /// Hands the position of `fd` to the context, for a call of the context
    /// that reads it.
    pub(crate) fn sync_position(&self, ctx: &mut WasiP1Ctx, fd: types::Fd) {
        if let Some(file) = self.get(fd) {
            // A position the file description cannot tell (it never fails
            // on a regular file) leaves the context's as it was.
            if let Ok(pos) = file.position() {
                seek_context(ctx, fd, pos);
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.open.read().is_empty()
    }

    /// Gives every descriptor back to the context, positions included (for
    /// an embedder's direct use of it).
    pub(crate) fn release_all(&self, ctx: &mut WasiP1Ctx) {
        // The embedder may change any descriptor.
        self.dirs.lock().clear();
        let open = std::mem::take(&mut *self.open.write());
        for (fd, file) in open {
            // A position the file description cannot tell any more (the
            // file was closed under it, say) stays what the context had.
            if let Ok(pos) = file.release() {
                seek_context(ctx, fd.into(), pos);
            }
        }
    }
}

/// Sets the context's position of `fd` to `pos`, through its own `fd_seek`
/// (which, from the start or the current position, never waits: polled once).
fn seek_context(ctx: &mut WasiP1Ctx, fd: types::Fd, pos: u64) {
    use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1 as _;
    let mut none = [0u8; 0];
    let memory = &mut GuestMemory::Unshared(&mut none);
    let first = pos.min(i64::MAX as u64);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let set = ctx.fd_seek(memory, fd, first as i64, types::Whence::Set);
    let _ = std::pin::pin!(set).poll(&mut cx);
    if pos > first {
        let cur = ctx.fd_seek(memory, fd, (pos - first) as i64, types::Whence::Cur);
        let _ = std::pin::pin!(cur).poll(&mut cx);
    }
}

/// Calls `f` on each file of the context's resource table; `None` if there
/// are more than [`MAX_SCAN`] entries.
fn scan(ctx: &mut WasiP1Ctx, mut f: impl FnMut(&Arc<std::fs::File>)) -> Option<()> {
    use wasmtime_wasi::WasiView as _;
    use wasmtime_wasi::filesystem::Descriptor;
    for (i, entry) in ctx.ctx().table.iter_mut().enumerate() {
        if i >= MAX_SCAN {
            return None;
        }
        if let Some(Descriptor::File(file)) = (&*entry as &dyn std::any::Any).downcast_ref() {
            f(&file.file);
        }
    }
    Some(())
}

/// The guest's side of a read or write: its iovecs, as `wasmtime-wasi`
/// reads them, turned into the one buffer the protocol transfers.
impl OpenFile {
    /// `fd_write` (`At::Cursor`) or `fd_pwrite`; `None` if this descriptor
    /// is not handled here (the context must do it).
    pub(crate) fn guest_write(
        &self,
        memory: &GuestMemory<'_>,
        ciovs: types::CiovecArray,
        at: At,
        fuel: usize,
    ) -> Option<Result<types::Size, types::Error>> {
        let n = self.write(at, || {
            Ok(raw(memory, first_non_empty(memory, ciovs, fuel)?)?)
        })?;
        Some(n.and_then(|n| Ok(n.try_into()?)))
    }

    /// `fd_read`; `None` if not handled here.
    pub(crate) fn guest_read(
        &self,
        memory: &GuestMemory<'_>,
        iovs: types::IovecArray,
        fuel: usize,
    ) -> Option<Result<types::Size, types::Error>> {
        let n = self.read(|| {
            let (ptr, len) = raw(memory, first_non_empty(memory, iovs, fuel)?)?;
            Ok((ptr.cast_mut(), len))
        })?;
        Some(n.and_then(|n| Ok(n.try_into()?)))
    }

    /// `fd_pread`; `None` if not handled here.
    pub(crate) fn guest_pread(
        &self,
        memory: &GuestMemory<'_>,
        iovs: types::IovecArray,
        offset: u64,
        fuel: usize,
    ) -> Option<Result<types::Size, types::Error>> {
        let n = self.pread(offset, || {
            let (ptr, len) = raw(memory, first_non_empty(memory, iovs, fuel)?)?;
            Ok((ptr.cast_mut(), len))
        })?;
        Some(n.and_then(|n| Ok(n.try_into()?)))
    }

    /// `fd_seek`; `None` if not handled here.
    pub(crate) fn guest_seek(
        &self,
        offset: types::Filedelta,
        whence: types::Whence,
    ) -> Option<Result<types::Filesize, types::Error>> {
        use super::open_file::Whence;
        self.seek(
            offset,
            match whence {
                types::Whence::Set => Whence::Set,
                types::Whence::Cur => Whence::Cur,
                types::Whence::End => Whence::End,
            },
        )
    }
}

/// The first non-empty buffer of `iovs` (or an empty one), charging `fuel`
/// for the array and the buffer as `wasmtime-wasi` does: a guest's count
/// past the fuel is `ENOMEM`, before anything is read.
pub(crate) fn first_non_empty<T: Buffer>(
    memory: &GuestMemory<'_>,
    iovs: GuestPtr<[T]>,
    fuel: usize,
) -> Result<GuestPtr<[u8]>, types::Error> {
    let array = usize::try_from(iovs.len())
        .ok()
        .and_then(|n| n.checked_mul(std::mem::size_of::<T>()))
        .ok_or(types::Errno::Overflow)?;
    let fuel = fuel.checked_sub(array).ok_or(types::Errno::Nomem)?;
    for iov in iovs.iter() {
        let buf = memory.read(iov?)?.buffer();
        if buf.len() == 0 {
            continue;
        }
        if buf.len() as usize > fuel {
            return Err(types::Errno::Nomem.into());
        }
        return Ok(buf);
    }
    Ok(GuestPtr::new((0, 0)))
}

/// The host address and length of `buf`, checked to lie in `memory`.
fn raw(memory: &GuestMemory<'_>, buf: GuestPtr<[u8]>) -> Result<(*const u8, usize), GuestError> {
    let start = buf.offset_base() as usize;
    let len = buf.len() as usize;
    // Checks the range (an error past the end), whatever the memory.
    let checked = memory.as_slice(buf)?;
    let ptr = match (checked, memory) {
        (Some(slice), _) => slice.as_ptr(),
        // `UnsafeCell<u8>` has the layout of `u8`.
        (None, GuestMemory::Shared(cells)) => cells[start..start + len].as_ptr().cast::<u8>(),
        (None, GuestMemory::Unshared(_)) => unreachable_region(start, len)?,
    };
    Ok((ptr, len))
}

/// `as_slice` gives a slice for every unshared memory; should it ever not,
/// the call fails as an out-of-bounds one rather than panicking.
fn unreachable_region(start: usize, len: usize) -> Result<*const u8, GuestError> {
    Err(GuestError::PtrOutOfBounds(wiggle::Region {
        start: start as u32,
        len: len as u32,
    }))
}

/// A guest buffer descriptor: `iovec` (reads) or `ciovec` (writes).
pub(crate) trait Buffer: GuestType {
    fn buffer(self) -> GuestPtr<[u8]>;
}

impl Buffer for types::Iovec {
    fn buffer(self) -> GuestPtr<[u8]> {
        self.buf.as_array(self.buf_len)
    }
}

impl Buffer for types::Ciovec {
    fn buffer(self) -> GuestPtr<[u8]> {
        self.buf.as_array(self.buf_len)
    }
}

#[cfg(test)]
mod tests {
    use crate::SharedWasi;
    use crate::program::stop::StopSignal;
    use std::cell::UnsafeCell;
    use std::path::{Path, PathBuf};
    use wasmtime_wasi::p1::WasiP1Ctx;
    use wasmtime_wasi::p1::types::{self, Fdflags, Oflags, Rights, Whence};
    use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1;
    use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
    use wiggle::{GuestMemory, GuestPtr};

    const FUEL: usize = 1 << 20;
    const PREOPEN: u32 = 3;
    /// Where the iovec array goes, and the bytes it points to.
    const IOV: u32 = 0;
    const DATA: u32 = 1024;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wasi-threads-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn ctx(dir: &Path) -> WasiP1Ctx {
        WasiCtxBuilder::new()
            .preopened_dir(dir, "/d", FsPerms::ReadWrite)
            .unwrap()
            .allow_blocking_current_thread(true)
            .build_p1()
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        wasmtime_wasi::runtime::in_tokio(f)
    }

    fn show<T: std::fmt::Debug>(r: Result<T, types::Error>) -> String {
        match r {
            Ok(v) => format!("{v:?}"),
            Err(e) => match e.downcast() {
                Ok(errno) => format!("errno {errno:?}"),
                Err(trap) => format!("trap {trap}"),
            },
        }
    }

    /// Puts `data` at `DATA` and one iovec for it at `IOV`.
    fn iov(memory: &mut GuestMemory<'_>, data: &[u8]) -> types::CiovecArray {
        let len = data.len() as u32;
        memory
            .copy_from_slice(data, GuestPtr::<[u8]>::new((DATA, len)))
            .unwrap();
        memory.write(GuestPtr::<u32>::new(IOV), DATA).unwrap();
        memory.write(GuestPtr::<u32>::new(IOV + 4), len).unwrap();
        GuestPtr::new((IOV, 1))
    }

    fn read_iov(memory: &mut GuestMemory<'_>, len: u32) -> types::IovecArray {
        memory
            .copy_from_slice(
                &vec![0xEE; len as usize],
                GuestPtr::<[u8]>::new((DATA, len)),
            )
            .unwrap();
        memory.write(GuestPtr::<u32>::new(IOV), DATA).unwrap();
        memory.write(GuestPtr::<u32>::new(IOV + 4), len).unwrap();
        GuestPtr::new((IOV, 1))
    }

    fn open<W: WasiSnapshotPreview1>(
        w: &mut W,
        memory: &mut GuestMemory<'_>,
        name: &str,
        oflags: Oflags,
        rights: Rights,
        fdflags: Fdflags,
    ) -> Result<types::Fd, types::Error> {
        let at = 4096;
        memory
            .copy_from_slice(
                name.as_bytes(),
                GuestPtr::<[u8]>::new((at, name.len() as u32)),
            )
            .unwrap();
        w.set_hostcall_fuel(FUEL);
        let path = GuestPtr::<str>::new((at, name.len() as u32));
        block(w.path_open(
            memory,
            PREOPEN.into(),
            types::Lookupflags::empty(),
            path,
            oflags,
            rights,
            rights,
            fdflags,
        ))
    }

    /// One sequence of calls on files: every result, and what reads put in
    /// memory, as text.
    fn script<W: WasiSnapshotPreview1>(w: &mut W, memory: &mut GuestMemory<'_>) -> Vec<String> {
        let mut log = Vec::new();
        let mut note = |what: &str, r: String| log.push(format!("{what}: {r}"));
        let rw = Rights::FD_READ | Rights::FD_WRITE | Rights::FD_SEEK | Rights::FD_TELL;
        let create = Oflags::CREAT | Oflags::TRUNC;
        macro_rules! call {
            ($what:expr, $e:expr) => {{
                w.set_hostcall_fuel(FUEL);
                let r = $e;
                note($what, show(r));
            }};
        }
        macro_rules! write {
            ($fd:expr, $data:expr) => {{
                let ciovs = iov(memory, $data);
                call!(
                    concat!("write ", stringify!($data)),
                    block(w.fd_write(memory, $fd, ciovs))
                )
            }};
        }
        macro_rules! pwrite {
            ($fd:expr, $data:expr, $at:expr) => {{
                let ciovs = iov(memory, $data);
                call!("pwrite", block(w.fd_pwrite(memory, $fd, ciovs, $at)))
            }};
        }
        macro_rules! read {
            ($fd:expr, $len:expr) => {{
                let iovs = read_iov(memory, $len);
                call!("read", block(w.fd_read(memory, $fd, iovs)));
                let got = memory.to_vec(GuestPtr::<[u8]>::new((DATA, $len))).unwrap();
                note("read bytes", String::from_utf8_lossy(&got).into_owned());
            }};
        }
        macro_rules! pread {
            ($fd:expr, $len:expr, $at:expr) => {{
                let iovs = read_iov(memory, $len);
                call!("pread", block(w.fd_pread(memory, $fd, iovs, $at)));
                let got = memory.to_vec(GuestPtr::<[u8]>::new((DATA, $len))).unwrap();
                note("pread bytes", String::from_utf8_lossy(&got).into_owned());
            }};
        }
        macro_rules! seek {
            ($fd:expr, $off:expr, $whence:expr) => {
                call!("seek", block(w.fd_seek(memory, $fd, $off, $whence)))
            };
        }
        macro_rules! tell {
            ($fd:expr) => {
                call!("tell", w.fd_tell(memory, $fd))
            };
        }

        // A file at its position: writes, seeks, reads.
        let a = open(w, memory, "a", create, rw, Fdflags::empty()).unwrap();
        write!(a, b"hello world");
        tell!(a);
        seek!(a, 2, Whence::Set);
        write!(a, b"XY");
        tell!(a);
        seek!(a, -100, Whence::Cur);
        seek!(a, -3, Whence::End);
        read!(a, 8);
        tell!(a);
        seek!(a, 0, Whence::Set);
        read!(a, 64);
        pwrite!(a, b"far", 20);
        tell!(a);
        pread!(a, 6, 0);
        pread!(a, 8, 18);
        pread!(a, 4, 1000);
        pread!(a, 4, 1 << 62);
        pread!(a, 4, u64::MAX);
        tell!(a);
        seek!(a, 1 << 62, Whence::Set);
        seek!(a, i64::MAX, Whence::Cur);
        tell!(a);
        read!(a, 4);
        // A position the file system cannot hold: kept beside the kernel.
        write!(a, b"too far");
        tell!(a);
        seek!(a, 1 << 40, Whence::Set);
        write!(a, b"sparse");
        tell!(a);
        seek!(a, 0, Whence::Set);
        call!("truncate", block(w.fd_filestat_set_size(memory, a, 64)));

        // Append mode.
        let b = open(w, memory, "b", create, rw, Fdflags::APPEND).unwrap();
        write!(b, b"line1\n");
        tell!(b);
        write!(b, b"line2\n");
        seek!(b, 0, Whence::Set);
        read!(b, 5);
        tell!(b);
        write!(b, b"line3\n");
        tell!(b);
        pread!(b, 5, 6);
        tell!(b);
        pwrite!(b, b"P", 0);
        tell!(b);
        write!(b, b"");
        tell!(b);
        call!(
            "fdstat",
            block(w.fd_fdstat_get(memory, b)).map(|s| s.fs_flags)
        );
        // Out of append mode, and back.
        call!(
            "set flags",
            w.fd_fdstat_set_flags(memory, b, Fdflags::empty())
        );
        call!(
            "fdstat",
            block(w.fd_fdstat_get(memory, b)).map(|s| s.fs_flags)
        );
        seek!(b, 1, Whence::Set);
        write!(b, b"Z");
        tell!(b);
        call!(
            "set flags",
            w.fd_fdstat_set_flags(memory, b, Fdflags::APPEND)
        );
        write!(b, b"tail\n");
        tell!(b);
        call!("bad flags", w.fd_fdstat_set_flags(memory, b, Fdflags::SYNC));

        // Rights: a write-only file cannot be read, a read-only one written.
        let wo = open(
            w,
            memory,
            "a",
            Oflags::empty(),
            Rights::FD_WRITE,
            Fdflags::empty(),
        )
        .unwrap();
        read!(wo, 4);
        pread!(wo, 4, 0);
        tell!(wo);
        let ro = open(
            w,
            memory,
            "b",
            Oflags::empty(),
            Rights::FD_READ,
            Fdflags::empty(),
        )
        .unwrap();
        write!(ro, b"no");
        tell!(ro);
        read!(ro, 6);

        // Guest-chosen counts and pointers.
        let huge = GuestPtr::<[types::Ciovec]>::new((IOV, u32::MAX));
        call!("u32::MAX iovecs", block(w.fd_write(memory, a, huge)));
        let huge = GuestPtr::<[types::Iovec]>::new((IOV, u32::MAX));
        call!("u32::MAX iovecs read", block(w.fd_read(memory, a, huge)));
        call!(
            "u32::MAX iovecs pread",
            block(w.fd_pread(memory, a, huge, 0))
        );
        let past = GuestPtr::<[types::Ciovec]>::new((u32::MAX - 4, 1));
        call!("iovecs past the end", block(w.fd_write(memory, a, past)));
        memory
            .write(GuestPtr::<u32>::new(IOV), u32::MAX - 8)
            .unwrap();
        memory.write(GuestPtr::<u32>::new(IOV + 4), 64).unwrap();
        let ciovs = GuestPtr::new((IOV, 1));
        call!("buffer past the end", block(w.fd_write(memory, a, ciovs)));
        call!(
            "buffer past the end read",
            block(w.fd_read(memory, a, ciovs.cast()))
        );
        call!(
            "buffer past the end pread",
            block(w.fd_pread(memory, a, ciovs.cast(), 0))
        );
        memory.write(GuestPtr::<u32>::new(IOV), 0).unwrap();
        memory
            .write(GuestPtr::<u32>::new(IOV + 4), u32::MAX)
            .unwrap();
        call!("u32::MAX bytes", block(w.fd_write(memory, a, ciovs)));
        tell!(a);
        // Empty iovecs, then one with data: the first non-empty one counts.
        let data = iov(memory, b"after-empty");
        memory.write(GuestPtr::<u32>::new(IOV + 8), DATA).unwrap();
        memory.write(GuestPtr::<u32>::new(IOV + 12), 5).unwrap();
        memory.write(GuestPtr::<u32>::new(IOV + 4), 0).unwrap();
        let two = GuestPtr::<[types::Ciovec]>::new((data.offset_base(), 2));
        call!("empty then five", block(w.fd_write(memory, a, two)));
        tell!(a);

        // A poll reads the position (a hang-up flag at the end).
        seek!(a, 0, Whence::End);
        let sub = types::Subscription {
            userdata: 7,
            u: types::SubscriptionU::FdRead(types::SubscriptionFdReadwrite { file_descriptor: a }),
        };
        memory.write(GuestPtr::new(8192), sub).unwrap();
        call!(
            "poll",
            block(w.poll_oneoff(memory, GuestPtr::new(8192), GuestPtr::new(9216), 1))
        );
        let event: types::Event = memory.read(GuestPtr::new(9216)).unwrap();
        note("poll event", format!("{event:?}"));

        // Renumbering and closing.
        call!("renumber", block(w.fd_renumber(memory, a, b)));
        write!(b, b"via-b");
        tell!(b);
        write!(a, b"gone");
        tell!(a);
        call!("renumber to itself", block(w.fd_renumber(memory, b, b)));
        tell!(b);
        call!("close", block(w.fd_close(memory, b)));
        write!(b, b"closed");
        tell!(b);
        seek!(b, 0, Whence::Set);
        read!(b, 4);
        call!("close again", block(w.fd_close(memory, b)));
        // The number is reused by the next open.
        let c = open(w, memory, "c", create, rw, Fdflags::empty()).unwrap();
        note("reused", format!("{}", u32::from(c) == u32::from(b)));
        write!(c, b"fresh");
        tell!(c);
        // A directory and a non-existent fd.
        write!(PREOPEN.into(), b"dir");
        write!(99.into(), b"none");
        seek!(99.into(), 0, Whence::Set);
        tell!(99.into());
        log
    }

    fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    }

    fn unshared() -> Vec<u8> {
        vec![0; 64 * 1024]
    }

    fn shared() -> Vec<UnsafeCell<u8>> {
        (0..64 * 1024).map(|_| UnsafeCell::new(0)).collect()
    }

    /// Every call on files, through the files kept beside the context,
    /// gives what the context itself gives: results, errnos, positions,
    /// bytes read and the files left behind, on unshared and shared memory.
    #[test]
    fn files_answer_as_the_context_does() {
        for memory_kind in ["unshared", "shared"] {
            let run = |name: &str, shared_wasi: bool| {
                let dir = scratch(&format!("{memory_kind}-{name}"));
                let (mut plain, mut cells) = (unshared(), shared());
                let memory = &mut match memory_kind {
                    "unshared" => GuestMemory::Unshared(&mut plain),
                    _ => GuestMemory::Shared(&cells[..]),
                };
                let log = if shared_wasi {
                    let mut w = SharedWasi::with_stop_signal(ctx(&dir), StopSignal::new());
                    let log = script(&mut w, memory);
                    assert!(!w.files.is_empty() || cfg!(not(target_os = "linux")));
                    log
                } else {
                    script(&mut ctx(&dir), memory)
                };
                cells.clear();
                let files = contents(&dir);
                let _ = std::fs::remove_dir_all(&dir);
                (log, files)
            };
            let (expected, expected_files) = run("direct", false);
            let (got, got_files) = run("shared", true);
            for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
                assert_eq!(g, e, "{memory_kind} memory, step {i}");
            }
            assert_eq!(got.len(), expected.len());
            assert_eq!(got_files, expected_files, "{memory_kind} memory");
        }
    }

    /// `with_ctx` sees the positions the guest's calls left, and the
    /// context carries on from them.
    #[test]
    fn with_ctx_sees_the_positions() {
        let dir = scratch("with-ctx");
        let mut w = SharedWasi::with_stop_signal(ctx(&dir), StopSignal::new());
        let mut bytes = unshared();
        let memory = &mut GuestMemory::Unshared(&mut bytes);
        let rw = Rights::FD_READ | Rights::FD_WRITE;
        let a = open(&mut w, memory, "a", Oflags::CREAT, rw, Fdflags::empty()).unwrap();
        let b = open(&mut w, memory, "b", Oflags::CREAT, rw, Fdflags::APPEND).unwrap();
        for fd in [a, b] {
            let ciovs = iov(memory, b"0123456789");
            block(w.fd_write(memory, fd, ciovs)).unwrap();
        }
        let ciovs = iov(memory, b"abc");
        block(w.fd_write(memory, b, ciovs)).unwrap();
        assert_eq!(w.fd_tell(memory, a).unwrap(), 10);
        assert_eq!(w.fd_tell(memory, b).unwrap(), 13);
        // What a thread looked up just before the hand-back.
        let stale = [a, b].map(|fd| w.files.get(fd).unwrap());
        let (ta, tb) = w.with_ctx(|ctx| {
            let mut none = [0u8; 0];
            let m = &mut GuestMemory::Unshared(&mut none);
            (ctx.fd_tell(m, a).unwrap(), ctx.fd_tell(m, b).unwrap())
        });
        assert_eq!((ta, tb), (10, 13));
        // It is not handled here any more: a write through it would move
        // the offset behind the context's back.
        for file in &stale {
            let ciovs = iov(memory, b"lost");
            assert!(
                file.guest_write(memory, ciovs, super::At::Cursor, FUEL)
                    .is_none()
            );
            assert!(file.tell().is_none());
        }
        // The context has them back: the next writes go where it says.
        let ciovs = iov(memory, b"!");
        block(w.fd_write(memory, a, ciovs)).unwrap();
        block(w.fd_write(memory, b, ciovs)).unwrap();
        assert_eq!(w.fd_tell(memory, a).unwrap(), 11);
        assert_eq!(w.fd_tell(memory, b).unwrap(), 14);
        assert!(w.files.is_empty());
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"0123456789!");
        assert_eq!(std::fs::read(dir.join("b")).unwrap(), b"0123456789abc!");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Threads writing to one descriptor share its position: appends and
    /// writes at the position never overlap, and the position ends at the
    /// end of everything written; also when the descriptors are handed back
    /// to the context (`with_ctx`) while the writes run.
    #[test]
    fn threads_share_a_descriptors_position() {
        const THREADS: usize = 4;
        const LINES: usize = 500;
        for (name, fdflags, hand_back) in [
            ("append", Fdflags::APPEND, false),
            ("cursor", Fdflags::empty(), false),
            ("cursor-handed-back", Fdflags::empty(), true),
        ] {
            let dir = scratch(&format!("threads-{name}"));
            let mut w = SharedWasi::with_stop_signal(ctx(&dir), StopSignal::new());
            let mut bytes = unshared();
            let memory = &mut GuestMemory::Unshared(&mut bytes);
            let rw = Rights::FD_READ | Rights::FD_WRITE;
            let fd = open(&mut w, memory, "f", Oflags::CREAT, rw, fdflags).unwrap();
            let threads: Vec<_> = (0..THREADS)
                .map(|t| {
                    let mut w = w.clone();
                    std::thread::spawn(move || {
                        let mut bytes = unshared();
                        let memory = &mut GuestMemory::Unshared(&mut bytes);
                        for i in 0..LINES {
                            let line = format!("thread {t} line {i:05}............\n");
                            assert_eq!(line.len(), 32);
                            let ciovs = iov(memory, line.as_bytes());
                            w.set_hostcall_fuel(FUEL);
                            assert_eq!(block(w.fd_write(memory, fd, ciovs)).unwrap(), 32);
                        }
                    })
                })
                .collect();
            if hand_back {
                // Once the writers are well under way: the position the
                // context gets must count every write that has moved the
                // offset, or its next write overwrites a line.
                let path = dir.join("f");
                while std::fs::metadata(&path).map_or(0, |m| m.len()) < 32 * 200 {
                    std::thread::yield_now();
                }
                w.with_ctx(|_| ());
                assert!(w.files.is_empty());
            }
            for t in threads {
                t.join().unwrap();
            }
            let total = (THREADS * LINES * 32) as u64;
            assert_eq!(w.fd_tell(memory, fd).unwrap(), total, "{name}");
            let text = std::fs::read_to_string(dir.join("f")).unwrap();
            assert_eq!(text.len() as u64, total, "{name}");
            let mut lines: Vec<&str> = text.lines().collect();
            lines.sort();
            lines.dedup();
            assert_eq!(lines.len(), THREADS * LINES, "{name}: a line lost or torn");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
