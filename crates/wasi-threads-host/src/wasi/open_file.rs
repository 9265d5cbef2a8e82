//! One descriptor adopted by [`super::files`]: the protocol by which
//! threads read, write and seek it without the shared context, and hand it
//! back to the context.
//!
//! The file description (the kernel's open file) is the one source of
//! truth for the position, and every operation at the position is **one
//! syscall** on it: `read`, `write` (which in append mode the kernel makes
//! an append) and `lseek` with the guest's own whence. The kernel
//! serializes those per file description (`f_pos_lock`), for our threads as
//! for a native program's, so none of them can lose or repeat bytes of
//! another, and none holds a lock of ours across the I/O. Two syscalls for
//! one operation (read the offset, then set it) are never made while another
//! operation at the offset may run between them: that is how `fd_seek` once
//! lost writes racing it.
//!
//! What a lock of ours guards:
//! - `state`: whether the descriptor is handled here at all (first use finds
//!   out; the hand-back ends it), the append flag, and the position where the
//!   kernel refused it ([`Pos::At`]: a seek past the file system's largest
//!   file, which the context allows). Operations at a [`Pos::At`] position
//!   are done under it, as the context does them (positional I/O), since
//!   they read and then move a position of ours.
//! - `in_flight`: held shared by each operation at the kernel offset while
//!   it runs (taken before `state` is let go), exclusively by whoever needs
//!   the offset to stay put across more than one syscall: the hand-back to
//!   the context, and a seek the kernel refused, which then computes the
//!   position itself.
//!
//! The protocol is generic over the [`Description`] so that
//! `tests/files_model.rs` can check it with `loom` on a model of the
//! kernel's file description (built with `--cfg wasi_threads_loom`, like the lifecycle).

use crate::sync::{self, Mutex, RwLock};
use wasmtime_wasi::p1::types;

/// What the protocol needs of a kernel file description; each method is
/// one syscall on it, atomic with respect to the others.
pub trait Description: Send + Sync {
    /// `write(2)` at the offset (an append in append mode).
    ///
    /// # Safety
    /// `ptr..ptr+len` must be readable memory for the duration of the call.
    unsafe fn write(&self, ptr: *const u8, len: usize) -> std::io::Result<usize>;
    /// `pwrite(2)`.
    ///
    /// # Safety
    /// As [`Description::write`].
    unsafe fn write_at(&self, ptr: *const u8, len: usize, offset: u64) -> std::io::Result<usize>;
    /// `read(2)` at the offset.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be writable memory for the duration of the call.
    unsafe fn read(&self, ptr: *mut u8, len: usize) -> std::io::Result<usize>;
    /// `pread(2)`.
    ///
    /// # Safety
    /// As [`Description::read`].
    unsafe fn read_at(&self, ptr: *mut u8, len: usize, offset: u64) -> std::io::Result<usize>;
    /// `lseek(2)`: the new offset.
    fn seek(&self, offset: i64, whence: Whence) -> std::io::Result<u64>;
    /// The file's size (`fstat`).
    fn size(&self) -> std::io::Result<u64>;
    /// Whether it is a regular file.
    fn is_regular(&self) -> bool;
    /// Sets or clears `O_APPEND`.
    fn set_append(&self, append: bool) -> std::io::Result<()>;
}

/// `lseek`'s whence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whence {
    /// From the start.
    Set,
    /// From the offset.
    Cur,
    /// From the end of the file.
    End,
}

/// One adopted descriptor.
pub struct OpenFile<D: Description = std::fs::File> {
    file: std::sync::Arc<D>,
    state: Mutex<State>,
    in_flight: RwLock<()>,
}

struct State {
    /// `None` until first use, then whether the file is a regular file (and
    /// so handled here at all); `Some(false)` also once the descriptor is
    /// given back to the context ([`OpenFile::release`]), for a thread that
    /// looked it up just before.
    regular: Option<bool>,
    append: bool,
    pos: Pos,
    /// Counts the moves of the position to one kept here ([`Pos::At`]),
    /// each made with no I/O at the offset under way: an append that began
    /// before one such move ended before it, and leaves the position alone.
    parked: u64,
}

#[derive(Clone, Copy)]
enum Pos {
    /// Kept here: before first use, and where the kernel refused the
    /// position.
    At(u64),
    /// The file description's offset.
    Kernel,
}

/// Where a read or write goes.
#[derive(Clone, Copy, Debug)]
pub enum At {
    /// The descriptor's position, advanced by the call.
    Cursor,
    /// An explicit offset; the position is left alone.
    Offset(u64),
}

/// A buffer in the guest's memory, checked: its address and length.
pub type Raw<P> = Result<(P, usize), types::Error>;

impl<D: Description> OpenFile<D> {
    /// A descriptor the context has just opened (its position 0), with
    /// `append` as its flags say; nothing is done to the file until first use.
    pub fn new(file: std::sync::Arc<D>, append: bool) -> Self {
        OpenFile {
            file,
            state: Mutex::new(State {
                regular: None,
                append,
                // As the context starts every descriptor.
                pos: Pos::At(0),
                parked: 0,
            }),
            in_flight: RwLock::new(()),
        }
    }

    /// The file description.
    pub fn file(&self) -> &std::sync::Arc<D> {
        &self.file
    }

    /// Whether this descriptor is handled here; the first call finds out,
    /// and puts the file description in append mode if the descriptor is.
    fn ready(&self, state: &mut State) -> bool {
        if let Some(regular) = state.regular {
            return regular;
        }
        let regular =
            self.file.is_regular() && (!state.append || self.file.set_append(true).is_ok());
        state.regular = Some(regular);
        if let (true, Pos::At(pos)) = (regular, state.pos) {
            self.kernel_or_at(state, pos, false);
        }
        regular
    }

    /// The current position, for the context; no I/O at the offset is
    /// under way when it is read.
    pub fn position(&self) -> Result<u64, types::Error> {
        let state = sync::lock(&self.state);
        let _settled = sync::write(&self.in_flight);
        self.resolve(&state)
    }

    /// The context set or cleared the append flag.
    pub fn set_append(&self, append: bool) {
        let mut state = sync::lock(&self.state);
        if state.append == append {
            return;
        }
        if state.regular == Some(true) {
            // `F_SETFL` fails only on a closed descriptor, and this entry
            // keeps it open. The offset stays where it is.
            let _ = self.file.set_append(append);
        }
        state.append = append;
    }

    /// Gives the descriptor back to the context: waits for the I/O at the
    /// offset still under way, takes the file description out of append
    /// mode again, as the context left it, and returns the position for the
    /// context. A thread that looked the descriptor up before it left the
    /// table finds it not handled here from now on, and goes to the
    /// context, so no write moves the offset after the position was read.
    pub fn release(&self) -> Result<u64, types::Error> {
        let mut state = sync::lock(&self.state);
        let _settled = sync::write(&self.in_flight);
        let pos = self.resolve(&state);
        if state.regular == Some(true) && state.append {
            let _ = self.file.set_append(false);
        }
        state.regular = Some(false);
        pos
    }

    /// The descriptor renumbered (`fd_renumber`): waits for the I/O at the
    /// offset under way, ends this entry as [`OpenFile::release`] does (a
    /// thread that looked it up by the old number goes to the context,
    /// which no longer has that number), and returns the entry for the new
    /// number, with this one's state. The file description is left as it is.
    pub fn renumber(&self) -> Self {
        let mut state = sync::lock(&self.state);
        let _settled = sync::write(&self.in_flight);
        let moved = OpenFile {
            file: self.file.clone(),
            state: Mutex::new(State {
                regular: state.regular,
                append: state.append,
                pos: state.pos,
                parked: state.parked,
            }),
            in_flight: RwLock::new(()),
        };
        state.regular = Some(false);
        moved
    }

    /// `fd_write` (`At::Cursor`) or `fd_pwrite` of the buffer `buf` gives,
    /// as `wasmtime-wasi` does it on a file; `None` if this descriptor is
    /// not handled here (the context must do it, `buf` untouched).
    pub fn write(
        &self,
        at: At,
        buf: impl FnOnce() -> Raw<*const u8>,
    ) -> Option<Result<usize, types::Error>> {
        let mut state = sync::lock(&self.state);
        if !self.ready(&mut state) {
            return None;
        }
        Some((|| {
            let (ptr, len) = buf()?;
            let append = state.append;
            Ok(match (append, at, state.pos) {
                (true, At::Cursor, _) | (false, At::Cursor, Pos::Kernel) => {
                    let parked = state.parked;
                    let io = sync::read(&self.in_flight);
                    drop(state);
                    // SAFETY: `buf` gave a range of the guest's memory, which
                    // its caller keeps mapped for this call.
                    let n = unsafe { self.file.write(ptr, len) };
                    drop(io);
                    let n = match n {
                        // The kernel checks the offset even for an append:
                        // one far out (a seek near 2^63) refuses a write the
                        // context appends.
                        Err(e) if append && e.raw_os_error() == Some(libc::EINVAL) => {
                            self.append_from_the_end(ptr, len).unwrap_or(Err(e))
                        }
                        n => n,
                    };
                    let n = n.map_err(io_error)?;
                    if append {
                        self.appended(len, parked);
                    }
                    n
                }
                (_, At::Offset(offset), _) => {
                    // Held so that a hand-back (which takes the description
                    // out of append mode) waits for it.
                    let io = sync::read(&self.in_flight);
                    drop(state);
                    // Linux `pwrite` on an append file description appends
                    // and leaves its offset alone, as the context's
                    // `pwritev2` does.
                    // SAFETY: as above.
                    let n = unsafe { self.file.write_at(ptr, len, offset) };
                    drop(io);
                    n.map_err(io_error)?
                }
                (false, At::Cursor, Pos::At(pos)) => {
                    // SAFETY: as above.
                    let n = unsafe { self.file.write_at(ptr, len, pos) }.map_err(io_error)?;
                    let pos = pos.checked_add(n as u64).ok_or(types::Errno::Overflow)?;
                    state.pos = Pos::At(pos);
                    n
                }
            })
        })())
    }

    /// An append the kernel refused for the offset it started from: moves
    /// the offset to the end (where the append goes anyway) and appends
    /// there, with no other I/O at the offset between the two. `None` if the
    /// descriptor is no longer handled here or no longer in append mode.
    fn append_from_the_end(&self, ptr: *const u8, len: usize) -> Option<std::io::Result<usize>> {
        let state = sync::lock(&self.state);
        let _settled = sync::write(&self.in_flight);
        if state.regular != Some(true) || !state.append {
            return None;
        }
        if let Err(e) = self.file.seek(0, Whence::End) {
            return Some(Err(e));
        }
        // SAFETY: as for `write`, whose caller's range this is.
        Some(unsafe { self.file.write(ptr, len) })
    }

    /// After an append of `len` bytes at the end, begun when `parked` moves
    /// to a kept position had been made: the position is the end of the
    /// file, as the context leaves it, unless a seek since kept a position
    /// here (that seek came after the append).
    fn appended(&self, len: usize, parked: u64) {
        let mut state = sync::lock(&self.state);
        if state.regular != Some(true) || state.parked != parked {
            return;
        }
        state.pos = if len == 0 {
            // A write of nothing leaves the offset alone; the context puts
            // the position at the end of the file. One `lseek`, so that
            // another thread's append cannot slip between a look at the
            // size and the move to it.
            match self.file.seek(0, Whence::End) {
                Ok(_) => Pos::Kernel,
                Err(_) => return,
            }
        } else {
            // The kernel's append left the offset at the end of what it
            // wrote, wherever the position was.
            Pos::Kernel
        };
    }

    /// `fd_pread` into the buffer `buf` gives; `None` if this descriptor is
    /// not handled here. The position is neither used nor moved, so nothing
    /// is held across the read.
    pub fn pread(
        &self,
        offset: u64,
        buf: impl FnOnce() -> Raw<*mut u8>,
    ) -> Option<Result<usize, types::Error>> {
        if !self.ready(&mut sync::lock(&self.state)) {
            return None;
        }
        Some((|| {
            let (ptr, len) = buf()?;
            // SAFETY: as for `write`.
            unsafe { self.file.read_at(ptr, len, offset) }.map_err(io_error)
        })())
    }

    /// `fd_read` into the buffer `buf` gives, as `wasmtime-wasi` does it on
    /// a file; `None` if this descriptor is not handled here.
    pub fn read(&self, buf: impl FnOnce() -> Raw<*mut u8>) -> Option<Result<usize, types::Error>> {
        let mut state = sync::lock(&self.state);
        if !self.ready(&mut state) {
            return None;
        }
        Some((|| {
            let (ptr, len) = buf()?;
            Ok(match state.pos {
                Pos::Kernel => {
                    let io = sync::read(&self.in_flight);
                    drop(state);
                    // SAFETY: as for `write`; the kernel writes into the
                    // guest's memory, which may race with the guest's own
                    // accesses as any write to shared memory may.
                    let n = unsafe { self.file.read(ptr, len) };
                    drop(io);
                    n.map_err(io_error)?
                }
                Pos::At(pos) => {
                    // SAFETY: as above.
                    let n = unsafe { self.file.read_at(ptr, len, pos) }.map_err(io_error)?;
                    let pos = pos.checked_add(n as u64).ok_or(types::Errno::Overflow)?;
                    state.pos = Pos::At(pos);
                    n
                }
            })
        })())
    }

    /// `fd_seek`, as the context does it; `None` if not handled here.
    pub fn seek(&self, offset: i64, whence: Whence) -> Option<Result<u64, types::Error>> {
        let mut state = sync::lock(&self.state);
        if !self.ready(&mut state) {
            return None;
        }
        Some(match (whence, state.pos) {
            (Whence::Set, _) => match u64::try_from(offset) {
                Ok(pos) => {
                    self.kernel_or_at(&mut state, pos, false);
                    Ok(pos)
                }
                Err(_) => Err(types::Errno::Inval.into()),
            },
            // One `lseek` moves the offset from where it is, whatever the
            // I/O of other threads does meanwhile.
            (_, Pos::Kernel) => match self.file.seek(offset, whence) {
                Ok(pos) => Ok(pos),
                // Refused: a position before the start (refused by the
                // context too) or past the file system's largest file
                // (kept here). Computed as the context computes it, with
                // the offset held still.
                Err(_) => {
                    let _settled = sync::write(&self.in_flight);
                    self.seek_here(&mut state, offset, whence, true)
                }
            },
            (_, Pos::At(_)) => self.seek_here(&mut state, offset, whence, false),
        })
    }

    /// A seek from the current position or the end computed here; the
    /// offset must not move meanwhile (`state` held, and `in_flight` when
    /// the position is the kernel's).
    fn seek_here(
        &self,
        state: &mut State,
        offset: i64,
        whence: Whence,
        settled: bool,
    ) -> Result<u64, types::Error> {
        let from = match whence {
            Whence::Cur => self.resolve(state)?,
            _ => self.file.size().map_err(io_error)?,
        };
        let pos = from.checked_add_signed(offset).ok_or(types::Errno::Inval)?;
        self.kernel_or_at(state, pos, settled);
        Ok(pos)
    }

    /// `fd_tell`; `None` if not handled here.
    pub fn tell(&self) -> Option<Result<u64, types::Error>> {
        let mut state = sync::lock(&self.state);
        if !self.ready(&mut state) {
            return None;
        }
        // One `lseek(fd, 0, SEEK_CUR)`, which reads the offset between
        // whole reads and writes.
        Some(self.resolve(&state))
    }

    fn resolve(&self, state: &State) -> Result<u64, types::Error> {
        match state.pos {
            Pos::At(pos) => Ok(pos),
            Pos::Kernel => self.file.seek(0, Whence::Cur).map_err(io_error),
        }
    }

    /// Moves the file description's offset to `pos` and lets it be the
    /// position, or keeps `pos` here if the kernel refuses it: then only
    /// once the I/O at the offset under way is over (it came first), unless
    /// the caller holds `in_flight` already (`settled`), so that no append
    /// moves the position after this seek.
    fn kernel_or_at(&self, state: &mut State, pos: u64, settled: bool) {
        if let Ok(Ok(_)) = i64::try_from(pos).map(|pos| self.file.seek(pos, Whence::Set)) {
            state.pos = Pos::Kernel;
            return;
        }
        if matches!(state.pos, Pos::Kernel) && !settled {
            drop(sync::write(&self.in_flight));
        }
        state.pos = Pos::At(pos);
        state.parked += 1;
    }
}

/// The errno `wasmtime-wasi` gives for a failed read or write of a file.
fn io_error(e: std::io::Error) -> types::Error {
    wasmtime_wasi::p2::StreamError::LastOperationFailed(e.into()).into()
}

impl Description for std::fs::File {
    unsafe fn write(&self, ptr: *const u8, len: usize) -> std::io::Result<usize> {
        // SAFETY: the caller's promise.
        unsafe { sys::write(self, ptr, len) }
    }

    unsafe fn write_at(&self, ptr: *const u8, len: usize, offset: u64) -> std::io::Result<usize> {
        // SAFETY: the caller's promise.
        unsafe { sys::write_at(self, ptr, len, offset) }
    }

    unsafe fn read(&self, ptr: *mut u8, len: usize) -> std::io::Result<usize> {
        // SAFETY: the caller's promise.
        unsafe { sys::read(self, ptr, len) }
    }

    unsafe fn read_at(&self, ptr: *mut u8, len: usize, offset: u64) -> std::io::Result<usize> {
        // SAFETY: the caller's promise.
        unsafe { sys::read_at(self, ptr, len, offset) }
    }

    fn seek(&self, offset: i64, whence: Whence) -> std::io::Result<u64> {
        sys::seek(self, offset, whence)
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn is_regular(&self) -> bool {
        cfg!(target_os = "linux") && self.metadata().is_ok_and(|m| m.file_type().is_file())
    }

    fn set_append(&self, append: bool) -> std::io::Result<()> {
        sys::set_append(self, append)
    }
}

#[cfg(target_os = "linux")]
mod sys {
    use super::Whence;
    use std::io;
    use std::os::fd::AsRawFd;

    fn check(r: isize) -> io::Result<usize> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }

    fn offset(offset: u64) -> io::Result<i64> {
        i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// # Safety
    /// `ptr..ptr+len` must be readable memory for the duration of the call.
    pub(super) unsafe fn write(
        file: &std::fs::File,
        ptr: *const u8,
        len: usize,
    ) -> io::Result<usize> {
        // SAFETY: the caller's promise; the kernel only reads the range.
        check(unsafe { libc::write(file.as_raw_fd(), ptr.cast(), len) })
    }

    /// # Safety
    /// As [`write`].
    pub(super) unsafe fn write_at(
        file: &std::fs::File,
        ptr: *const u8,
        len: usize,
        at: u64,
    ) -> io::Result<usize> {
        let at = offset(at)?;
        // SAFETY: as `write`.
        check(unsafe { libc::pwrite(file.as_raw_fd(), ptr.cast(), len, at) })
    }

    /// # Safety
    /// `ptr..ptr+len` must be writable memory for the duration of the call.
    pub(super) unsafe fn read_at(
        file: &std::fs::File,
        ptr: *mut u8,
        len: usize,
        at: u64,
    ) -> io::Result<usize> {
        let at = offset(at)?;
        // SAFETY: the caller's promise; the kernel only writes the range.
        check(unsafe { libc::pread(file.as_raw_fd(), ptr.cast(), len, at) })
    }

    /// # Safety
    /// `ptr..ptr+len` must be writable memory for the duration of the call.
    pub(super) unsafe fn read(file: &std::fs::File, ptr: *mut u8, len: usize) -> io::Result<usize> {
        // SAFETY: the caller's promise; the kernel only writes the range.
        check(unsafe { libc::read(file.as_raw_fd(), ptr.cast(), len) })
    }

    pub(super) fn seek(file: &std::fs::File, offset: i64, whence: Whence) -> io::Result<u64> {
        let whence = match whence {
            Whence::Set => libc::SEEK_SET,
            Whence::Cur => libc::SEEK_CUR,
            Whence::End => libc::SEEK_END,
        };
        // SAFETY: no memory is passed.
        let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as u64)
        }
    }

    pub(super) fn set_append(file: &std::fs::File, append: bool) -> io::Result<()> {
        let fd = file.as_raw_fd();
        // SAFETY: no memory is passed.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if append {
            flags | libc::O_APPEND
        } else {
            flags & !libc::O_APPEND
        };
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Elsewhere no descriptor is adopted (`is_regular` is false), so none of
/// these is called.
#[cfg(not(target_os = "linux"))]
mod sys {
    use super::Whence;
    use std::io;

    fn unsupported() -> io::Error {
        io::Error::from(io::ErrorKind::Unsupported)
    }
    pub(super) unsafe fn write(_: &std::fs::File, _: *const u8, _: usize) -> io::Result<usize> {
        Err(unsupported())
    }
    pub(super) unsafe fn write_at(
        _: &std::fs::File,
        _: *const u8,
        _: usize,
        _: u64,
    ) -> io::Result<usize> {
        Err(unsupported())
    }
    pub(super) unsafe fn read_at(
        _: &std::fs::File,
        _: *mut u8,
        _: usize,
        _: u64,
    ) -> io::Result<usize> {
        Err(unsupported())
    }
    pub(super) unsafe fn read(_: &std::fs::File, _: *mut u8, _: usize) -> io::Result<usize> {
        Err(unsupported())
    }
    pub(super) fn seek(_: &std::fs::File, _: i64, _: Whence) -> io::Result<u64> {
        Err(unsupported())
    }
    pub(super) fn set_append(_: &std::fs::File, _: bool) -> io::Result<()> {
        Err(unsupported())
    }
}
