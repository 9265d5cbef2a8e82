//! Standard output and error that a stuck reader cannot use to stall the
//! program.
//!
//! A `write(2)` to a pipe whose reader stopped reading blocks, and no thread
//! can be pulled out of that syscall. So guest threads never make it: a
//! [`SharedOutput`] hands the bytes to a pump thread (one per destination)
//! through a bounded queue and waits for the pump to report them written.
//! That wait is a future the caller races against the program's stop signal
//! and holds no lock anyone else needs, so a thread writing to a stuck pipe
//! blocks only itself (and later writers to the same destination, which must
//! come after it anyway), and a stopped program leaves it at once. Writes to
//! one destination stay in the order they were queued.
//!
//! The hand-off costs two context switches, so when nothing is queued the
//! writing thread writes itself if that cannot block: a pipe or socket with
//! `pwritev2(RWF_NOWAIT)` (which fails with `EAGAIN` instead of blocking;
//! the bytes left then go to the pump), a regular file or `/dev/null`
//! directly. Terminals and whatever else always go through the pump.
//!
//! The process's stdout and stderr are written as raw descriptors 1 and 2,
//! never through `std::io::stdout()`: a pump stuck in a write must not hold
//! std's stdout lock, or the embedder's own `print!`/`flush` would hang with
//! it.

#[cfg(unix)]
use bytes::Buf;
use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Most bytes queued for one destination. A writer waits for room beyond it,
/// so a stuck reader costs at most this much memory, or one write's bytes
/// if a single write is larger (those are in memory already).
const QUEUE_BYTES: usize = 1 << 20;

/// An output destination (the process's stdout or stderr, a file, a pipe,
/// memory, any writer) that the threads of a program write to without
/// blocking in the write themselves; given to the program through
/// [`Stdio`](crate::Stdio). Each write reaches the destination whole, never
/// interleaved with another thread's.
#[derive(Clone)]
pub struct SharedOutput {
    /// Held for its `Drop` only.
    _handle: Arc<Handle>,
    inner: Arc<Inner>,
}

/// Dropped with the last `SharedOutput` clone: the pump writes what is
/// queued and ends.
struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.state.lock().closed = true;
        self.inner.work.notify_one();
    }
}

struct Inner {
    state: Mutex<State>,
    /// Wakes the pump when bytes are queued.
    work: Condvar,
    is_terminal: bool,
    /// The process descriptor the writing thread may write itself, and how
    /// (one of the `DIRECT_*` values; `NOWAIT` falls back to `NEVER` when
    /// the kernel does not support it for this descriptor).
    #[cfg_attr(not(unix), allow(dead_code))]
    direct_fd: i32,
    direct: AtomicU8,
}

/// Only the pump writes.
const DIRECT_NEVER: u8 = 0;
/// Writes that would block fail with `EAGAIN` (`RWF_NOWAIT`).
#[cfg_attr(not(unix), allow(dead_code))]
const DIRECT_NOWAIT: u8 = 1;
/// Writes never block for long: a regular file, `/dev/null`.
#[cfg_attr(not(unix), allow(dead_code))]
const DIRECT_ALWAYS: u8 = 2;

struct State {
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    /// Bytes ever queued; a write's ticket is this count after its bytes.
    submitted: u64,
    /// Bytes the pump has finished with (written, or dropped after an error).
    done: u64,
    /// The first write error; every later write reports it.
    error: Option<std::io::ErrorKind>,
    raw_error: Option<i32>,
    closed: bool,
    wakers: Vec<Waker>,
    /// The writers waiting for room, in the order they came; only the first
    /// may queue its bytes, and no new writer goes before them.
    waiting: VecDeque<u64>,
    next_turn: u64,
    /// The destination, until the pump thread takes it.
    sink: Option<Box<dyn Write + Send>>,
}

/// The bytes written to a [`SharedOutput::memory`].
#[derive(Clone)]
pub struct MemoryOutput {
    bytes: Arc<Mutex<Vec<u8>>>,
    limit: usize,
}

impl MemoryOutput {
    /// What was written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.bytes.lock().clone()
    }
}

impl std::fmt::Debug for MemoryOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryOutput")
            .field("len", &self.bytes.lock().len())
            .field("limit", &self.limit)
            .finish()
    }
}

impl Write for MemoryOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut bytes = self.bytes.lock();
        if bytes.len().saturating_add(buf.len()) > self.limit {
            return Err(std::io::ErrorKind::StorageFull.into());
        }
        bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Why a write did not complete.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteFailed {
    pub(crate) kind: std::io::ErrorKind,
    pub(crate) raw: Option<i32>,
}

impl SharedOutput {
    /// The process's stdout (descriptor 1). One per process, shared by every
    /// program run in it, so their output is written in one order.
    pub fn stdout() -> Self {
        static PROCESS: OnceLock<SharedOutput> = OnceLock::new();
        PROCESS.get_or_init(|| Self::process(1)).clone()
    }

    /// The process's stderr (descriptor 2), as [`SharedOutput::stdout`].
    pub fn stderr() -> Self {
        static PROCESS: OnceLock<SharedOutput> = OnceLock::new();
        PROCESS.get_or_init(|| Self::process(2)).clone()
    }

    /// Output to `writer` (a file, a pipe, a socket, ...), written by a pump
    /// thread started on first use.
    pub fn from_writer(writer: impl Write + Send + 'static) -> Self {
        Self::with_sink(Box::new(writer), false, -1, DIRECT_NEVER)
    }

    /// Output kept in memory, at most `limit` bytes: the first write that
    /// would pass the limit fails with `ENOSPC`, as on a full disk, and so
    /// does every later one. [`MemoryOutput::contents`] gives what was
    /// written; once the program's `run` has returned, that is everything
    /// its threads wrote.
    pub fn memory(limit: usize) -> (Self, MemoryOutput) {
        let buffer = MemoryOutput {
            bytes: Arc::new(Mutex::new(Vec::new())),
            limit,
        };
        let output = Self::from_writer(buffer.clone());
        (output, buffer)
    }

    /// Whether this is [`SharedOutput::stdout`].
    pub(crate) fn is_process_stdout(&self) -> bool {
        Arc::ptr_eq(&self.inner, &Self::stdout().inner)
    }

    #[cfg(not(unix))]
    fn process(fd: i32) -> Self {
        // No raw descriptors to write without std's lock: the pump writes
        // through std's handles, the only writer of them in this process.
        let (sink, terminal): (Box<dyn Write + Send>, bool) = if fd == 1 {
            (
                Box::new(std::io::stdout()),
                std::io::IsTerminal::is_terminal(&std::io::stdout()),
            )
        } else {
            (
                Box::new(std::io::stderr()),
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
            )
        };
        Self::with_sink(sink, terminal, -1, DIRECT_NEVER)
    }

    #[cfg(unix)]
    fn process(fd: i32) -> Self {
        // SAFETY: `isatty` and `fstat` only read the descriptor's state;
        // `st` is a valid, writable `stat`.
        let (terminal, direct) = unsafe {
            let terminal = libc::isatty(fd) == 1;
            let mut st: libc::stat = std::mem::zeroed();
            let direct = if terminal || libc::fstat(fd, &mut st) != 0 {
                DIRECT_NEVER
            } else {
                match st.st_mode & libc::S_IFMT {
                    libc::S_IFREG => DIRECT_ALWAYS,
                    // /dev/null
                    libc::S_IFCHR if st.st_rdev == libc::makedev(1, 3) => DIRECT_ALWAYS,
                    // `RWF_NOWAIT` is Linux's; elsewhere only the pump
                    // writes to a pipe or socket.
                    libc::S_IFIFO | libc::S_IFSOCK if cfg!(target_os = "linux") => DIRECT_NOWAIT,
                    _ => DIRECT_NEVER,
                }
            };
            (terminal, direct)
        };
        Self::with_sink(Box::new(RawFd(fd)), terminal, fd, direct)
    }

    fn with_sink(
        sink: Box<dyn Write + Send>,
        is_terminal: bool,
        direct_fd: i32,
        direct: u8,
    ) -> Self {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_bytes: 0,
                submitted: 0,
                done: 0,
                error: None,
                raw_error: None,
                closed: false,
                wakers: Vec::new(),
                waiting: VecDeque::new(),
                next_turn: 0,
                sink: Some(sink),
            }),
            work: Condvar::new(),
            is_terminal,
            direct_fd,
            direct: AtomicU8::new(direct),
        });
        SharedOutput {
            _handle: Arc::new(Handle {
                inner: inner.clone(),
            }),
            inner,
        }
    }

    /// Queues `bytes` and resolves once the pump has written them (or failed
    /// to). The bytes are queued whole, never interleaved with another
    /// write's: once they fit beside what is queued (or nothing is), and
    /// after every writer that waited for room before them. Dropping the
    /// future leaves the bytes written in order once queued, and not at all
    /// before.
    pub(crate) async fn write(&self, mut bytes: Bytes) -> Result<(), WriteFailed> {
        let mut turn = Turn {
            inner: &self.inner,
            waiting: None,
        };
        let mut ticket = None;
        std::future::poll_fn(|cx| {
            let mut state = self.inner.state.lock();
            if let Some(failed) = state.failed() {
                return Poll::Ready(Err(failed));
            }
            if ticket.is_none() {
                let first = match turn.waiting {
                    Some(mine) => state.waiting.front() == Some(&mine),
                    None => state.waiting.is_empty(),
                };
                if first && state.done == state.submitted {
                    // Nothing queued or being written: writing here keeps
                    // the order, and the state lock keeps other writers out.
                    if let Err(failed) = self.write_directly(&mut state, &mut bytes) {
                        return Poll::Ready(Err(failed));
                    }
                    if bytes.is_empty() {
                        turn.served(&mut state);
                        return Poll::Ready(Ok(()));
                    }
                }
                let fits = state.queued_bytes == 0
                    || state.queued_bytes.saturating_add(bytes.len()) <= QUEUE_BYTES;
                if first && fits {
                    state.push(std::mem::take(&mut bytes));
                    ticket = Some(state.submitted);
                    turn.served(&mut state);
                    self.inner.work.notify_one();
                } else {
                    if turn.waiting.is_none() {
                        let mine = state.next_turn;
                        state.next_turn += 1;
                        state.waiting.push_back(mine);
                        turn.waiting = Some(mine);
                    }
                    state.register(cx.waker());
                    self.start_pump(&mut state);
                    return Poll::Pending;
                }
            }
            match ticket {
                Some(ticket) if state.done < ticket => {
                    state.register(cx.waker());
                    self.start_pump(&mut state);
                    Poll::Pending
                }
                _ => Poll::Ready(match state.failed() {
                    Some(failed) => Err(failed),
                    None => Ok(()),
                }),
            }
        })
        .await
    }

    /// Writes as much of `bytes` as can be written without blocking, and
    /// advances it past what was written.
    fn write_directly(&self, state: &mut State, bytes: &mut Bytes) -> Result<(), WriteFailed> {
        let mode = self.inner.direct.load(Ordering::Relaxed);
        if mode == DIRECT_NEVER {
            return Ok(());
        }
        #[cfg(not(unix))]
        {
            // Never reached: `process` only sets a direct mode on Unix.
            let _ = (state, bytes);
            Ok(())
        }
        #[cfg(unix)]
        self.write_directly_unix(mode, state, bytes)
    }

    #[cfg(unix)]
    fn write_directly_unix(
        &self,
        mode: u8,
        state: &mut State,
        bytes: &mut Bytes,
    ) -> Result<(), WriteFailed> {
        while !bytes.is_empty() {
            // SAFETY: `bytes` is valid for reads for the duration of the
            // call; the descriptor is the process's own.
            let n = unsafe { direct_write(self.inner.direct_fd, bytes, mode == DIRECT_NOWAIT) };
            if n >= 0 {
                bytes.advance(n as usize);
                continue;
            }
            let error = std::io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => break,
                Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => {
                    self.inner.direct.store(DIRECT_NEVER, Ordering::Relaxed);
                    break;
                }
                raw => {
                    state.error = Some(error.kind());
                    state.raw_error = raw;
                    return Err(WriteFailed {
                        kind: error.kind(),
                        raw,
                    });
                }
            }
        }
        Ok(())
    }

    /// Queues `bytes` if there is room, without waiting; the p2 stream's
    /// `write` (after `check_write` granted the room).
    fn push_now(&self, bytes: Bytes) -> Result<u64, WriteFailed> {
        let mut state = self.inner.state.lock();
        if let Some(failed) = state.failed() {
            return Err(failed);
        }
        state.push(bytes);
        self.start_pump(&mut state);
        self.inner.work.notify_one();
        Ok(state.submitted)
    }

    fn room(&self) -> Result<usize, WriteFailed> {
        let state = self.inner.state.lock();
        match state.failed() {
            Some(failed) => Err(failed),
            None => Ok(QUEUE_BYTES.saturating_sub(state.queued_bytes)),
        }
    }

    /// Resolves once every byte up to `ticket` is done and there is room.
    async fn drained_to(&self, ticket: u64) {
        std::future::poll_fn(|cx| {
            let mut state = self.inner.state.lock();
            if state.failed().is_some()
                || (state.done >= ticket && state.queued_bytes < QUEUE_BYTES)
            {
                return Poll::Ready(());
            }
            state.register(cx.waker());
            self.start_pump(&mut state);
            Poll::Pending
        })
        .await
    }

    fn start_pump(&self, state: &mut State) {
        if let Some(sink) = state.sink.take() {
            let inner = self.inner.clone();
            let spawned = std::thread::Builder::new()
                .name("wasi-output-pump".into())
                .spawn(move || pump(inner, sink));
            if let Err(e) = spawned {
                state.error = Some(e.kind());
                state.raw_error = e.raw_os_error();
                state.wake_all();
            }
        }
    }
}

/// A writer's place among those waiting for room in the queue; given up
/// when its write is queued, or when the write is dropped unqueued (a
/// stopped thread), so that the writers after it go on.
struct Turn<'a> {
    inner: &'a Inner,
    waiting: Option<u64>,
}

impl Turn<'_> {
    fn served(&mut self, state: &mut State) {
        if let Some(mine) = self.waiting.take() {
            state.waiting.retain(|&t| t != mine);
            // The next in line may fit now.
            state.wake_all();
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.waiting.is_some() {
            let mut state = self.inner.state.lock();
            self.served(&mut state);
        }
    }
}

impl State {
    fn push(&mut self, bytes: Bytes) {
        self.queued_bytes += bytes.len();
        self.submitted += bytes.len() as u64;
        self.queue.push_back(bytes);
    }

    fn failed(&self) -> Option<WriteFailed> {
        self.error.map(|kind| WriteFailed {
            kind,
            raw: self.raw_error,
        })
    }

    fn register(&mut self, waker: &Waker) {
        if !self.wakers.iter().any(|w| w.will_wake(waker)) {
            self.wakers.push(waker.clone());
        }
    }

    fn wake_all(&mut self) {
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
    }
}

/// Writes whatever is queued, a batch at a time, and reports progress.
fn pump(inner: Arc<Inner>, mut sink: Box<dyn Write + Send>) {
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        {
            let mut state = inner.state.lock();
            while state.queue.is_empty() {
                if state.closed {
                    return;
                }
                inner.work.wait(&mut state);
            }
            batch.extend(state.queue.drain(..));
        }
        let mut result = Ok(());
        let mut written = 0u64;
        for bytes in &batch {
            if result.is_ok() {
                result = sink.write_all(bytes).and_then(|()| sink.flush());
            }
            written += bytes.len() as u64;
        }
        batch.clear();
        let mut state = inner.state.lock();
        state.queued_bytes = state.queued_bytes.saturating_sub(written as usize);
        state.done += written;
        if let Err(e) = result
            && state.error.is_none()
        {
            state.error = Some(e.kind());
            state.raw_error = e.raw_os_error();
        }
        state.wake_all();
    }
}

/// Writes `buf` to `fd` once; with `nowait`, fails with `EAGAIN` instead of
/// blocking (`RWF_NOWAIT`).
///
/// # Safety
/// `fd` must be an open descriptor of the process.
#[cfg(target_os = "linux")]
unsafe fn direct_write(fd: i32, buf: &[u8], nowait: bool) -> isize {
    let iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let flags = if nowait { libc::RWF_NOWAIT } else { 0 };
    // SAFETY: `iov` describes `buf`, valid for reads for the duration of the
    // call; the caller guarantees `fd`.
    unsafe { libc::pwritev2(fd, &iov, 1, -1, flags) }
}

/// Writes `buf` to `fd` once (`nowait` is never asked for off Linux).
///
/// # Safety
/// `fd` must be an open descriptor of the process.
#[cfg(all(unix, not(target_os = "linux")))]
unsafe fn direct_write(fd: i32, buf: &[u8], _nowait: bool) -> isize {
    let len = buf.len().min(isize::MAX as usize);
    // SAFETY: `buf` is valid for reads of `len` bytes for the duration of
    // the call; the caller guarantees `fd`.
    unsafe { libc::write(fd, buf.as_ptr().cast(), len) }
}

/// A process descriptor written with `write(2)` directly: no `std::io`
/// lock is held while it blocks.
#[cfg(unix)]
struct RawFd(libc::c_int);

#[cfg(unix)]
impl Write for RawFd {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let len = buf.len().min(isize::MAX as usize);
        // SAFETY: `buf` is valid for reads of `len` bytes for the duration
        // of the call; descriptors 1 and 2 belong to the process and are
        // never closed by this crate.
        let n = unsafe { libc::write(self.0, buf.as_ptr().cast(), len) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl IsTerminal for SharedOutput {
    fn is_terminal(&self) -> bool {
        self.inner.is_terminal
    }
}

impl StdoutStream for SharedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(Stream {
            output: self.clone(),
            last: 0,
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(Stream {
            output: self.clone(),
            last: 0,
        })
    }
}

/// The context's view of a [`SharedOutput`], used for the descriptor when
/// the guest renumbers it away from 1 or 2 (the common path does not go
/// through it). Writes are queued; readiness means they are written.
struct Stream {
    output: SharedOutput,
    /// The ticket of this stream's last write.
    last: u64,
}

fn stream_error(failed: WriteFailed) -> StreamError {
    let error = match failed.raw {
        Some(raw) => std::io::Error::from_raw_os_error(raw),
        None => std::io::Error::from(failed.kind),
    };
    StreamError::LastOperationFailed(error.into())
}

#[wasmtime_wasi::async_trait]
impl Pollable for Stream {
    async fn ready(&mut self) {
        self.output.drained_to(self.last).await
    }
}

impl OutputStream for Stream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.last = self.output.push_now(bytes).map_err(stream_error)?;
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.output.room().map_err(stream_error)
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let room = match self.output.room() {
            Ok(room) => room,
            Err(failed) => return Poll::Ready(Err(std::io::Error::from(failed.kind))),
        };
        if room == 0 {
            let mut state = self.output.inner.state.lock();
            state.register(cx.waker());
            return Poll::Pending;
        }
        let n = buf.len().min(room);
        match self.output.push_now(Bytes::copy_from_slice(&buf[..n])) {
            Ok(ticket) => {
                self.last = ticket;
                Poll::Ready(Ok(n))
            }
            Err(failed) => Poll::Ready(Err(std::io::Error::from(failed.kind))),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut state = self.output.inner.state.lock();
        if let Some(failed) = state.failed() {
            return Poll::Ready(Err(std::io::Error::from(failed.kind)));
        }
        if state.done >= self.last {
            return Poll::Ready(Ok(()));
        }
        state.register(cx.waker());
        Poll::Pending
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn writes_arrive_in_order() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let out = SharedOutput::from_writer(writer);
        for i in 0..100 {
            let line = Bytes::from(format!("{i}\n"));
            wasmtime_wasi::runtime::in_tokio(out.write(line)).unwrap();
        }
        drop(out);
        let mut got = String::new();
        reader.read_to_string(&mut got).unwrap();
        let expected: String = (0..100).map(|i| format!("{i}\n")).collect();
        assert_eq!(got, expected);
    }

    /// Writers racing on one output, some writes larger than the queue:
    /// each write arrives whole, never cut by another's bytes.
    #[test]
    fn concurrent_writes_arrive_whole() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let out = SharedOutput::from_writer(writer);
        let reading = std::thread::spawn(move || {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            got
        });
        let sizes = [QUEUE_BYTES + 3, 100, QUEUE_BYTES / 2, 1, 3 * QUEUE_BYTES];
        let writers: Vec<_> = (0..4u8)
            .map(|t| {
                let out = out.clone();
                std::thread::spawn(move || {
                    for (i, size) in sizes.iter().enumerate() {
                        let byte = b'a' + t * 8 + i as u8;
                        let write = out.write(Bytes::from(vec![byte; *size]));
                        wasmtime_wasi::runtime::in_tokio(write).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        drop(out);
        let got = reading.join().unwrap();
        let mut runs = Vec::new();
        for chunk in got.chunk_by(|a, b| a == b) {
            runs.push((chunk[0], chunk.len()));
        }
        assert_eq!(runs.len(), 4 * sizes.len(), "a write was cut");
        for (byte, len) in runs {
            let (t, i) = ((byte - b'a') / 8, (byte - b'a') % 8);
            assert!(t < 4);
            assert_eq!(len, sizes[i as usize], "write {t}/{i}");
        }
    }

    #[test]
    fn a_closed_reader_is_an_error_not_a_hang() {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = SharedOutput::from_writer(writer);
        let result = wasmtime_wasi::runtime::in_tokio(out.write(Bytes::from_static(b"x")));
        let failed = result.unwrap_err();
        assert_eq!(failed.kind, std::io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_large_write_completes() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let out = SharedOutput::from_writer(writer);
        let reading = std::thread::spawn(move || {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            got
        });
        let big = Bytes::from(vec![7u8; 3 * QUEUE_BYTES + 5]);
        wasmtime_wasi::runtime::in_tokio(out.write(big.clone())).unwrap();
        drop(out);
        assert_eq!(reading.join().unwrap(), big);
    }
}
