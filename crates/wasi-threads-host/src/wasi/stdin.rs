//! Standard input that threads can wait on without holding the shared WASI
//! context.
//!
//! A guest thread blocked reading stdin must not stall every other thread's
//! I/O. [`SharedStdin`] buffers input read by a pump thread, so that
//! [`SharedWasi`](crate::SharedWasi) can wait for input to arrive *before*
//! taking the context's lock; the read itself then never blocks. The pump
//! reads only when a guest wants input and the buffer is empty, so a program
//! that never reads stdin never consumes any of it.

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::io::Read;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use wasmtime_wasi::cli::{IsTerminal, StdinStream};
use wasmtime_wasi::p2::{InputStream, Pollable, StreamError, StreamResult};

const CHUNK: usize = 64 * 1024;

/// A stdin for the guest (the process's, a pipe, a file, bytes in memory),
/// which its threads wait on without holding anything another thread
/// needs; given to the program through [`Stdio`](crate::Stdio).
#[derive(Clone)]
pub struct SharedStdin {
    /// Held for its `Drop` only.
    _handle: Arc<Handle>,
    inner: Arc<Inner>,
}

/// Dropped with the last `SharedStdin` clone: tells the pump nobody will
/// want input any more, so it ends instead of waiting forever.
struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.state.lock().closed = true;
        self.inner.want.notify_one();
    }
}

struct Inner {
    state: Mutex<State>,
    /// Wakes the pump when input is wanted.
    want: Condvar,
    /// Serialises guest reads: one thread waits for input and reads it while
    /// the others wait their turn, none of them holding the WASI context.
    /// A future's lock, so that waiting for a turn races the stop signal.
    pub(crate) turn: tokio::sync::Mutex<()>,
    is_terminal: bool,
}

struct State {
    chunks: VecDeque<Bytes>,
    eof: bool,
    error: Option<String>,
    wanted: bool,
    /// Every `SharedStdin` handle is gone.
    closed: bool,
    wakers: Vec<Waker>,
    /// The source, until the pump thread takes it.
    source: Option<Box<dyn Read + Send>>,
}

impl SharedStdin {
    /// The process's own stdin. There is one per process, shared by every
    /// program run in it, as the process has only one stdin to read.
    pub fn inherit() -> Self {
        static PROCESS: OnceLock<SharedStdin> = OnceLock::new();
        PROCESS
            .get_or_init(|| {
                let terminal = std::io::IsTerminal::is_terminal(&std::io::stdin());
                Self::with_source(Box::new(std::io::stdin()), terminal)
            })
            .clone()
    }

    /// Input from `reader`. The pump thread that reads it ends when `reader`
    /// reports end of file or an error.
    pub fn from_reader(reader: impl Read + Send + 'static) -> Self {
        Self::with_source(Box::new(reader), false)
    }

    /// Input from memory: `bytes`, then end of file.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self::from_reader(std::io::Cursor::new(bytes.into()))
    }

    fn with_source(source: Box<dyn Read + Send>, is_terminal: bool) -> Self {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                eof: false,
                error: None,
                wanted: false,
                closed: false,
                wakers: Vec::new(),
                source: Some(source),
            }),
            want: Condvar::new(),
            turn: tokio::sync::Mutex::new(()),
            is_terminal,
        });
        SharedStdin {
            _handle: Arc::new(Handle {
                inner: inner.clone(),
            }),
            inner,
        }
    }

    /// Resolves once no other thread is reading.
    pub(crate) async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.turn.lock().await
    }

    /// Resolves once a read would not block: input is buffered, or the input
    /// ended or failed.
    pub(crate) async fn readable(&self) {
        std::future::poll_fn(|cx| self.poll_readable(cx)).await
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.inner.state.lock();
        if !state.chunks.is_empty() || state.eof || state.error.is_some() {
            return Poll::Ready(());
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        self.request(&mut state);
        Poll::Pending
    }

    /// Whether a read would not block.
    pub(crate) fn is_readable(&self) -> bool {
        let state = self.inner.state.lock();
        !state.chunks.is_empty() || state.eof || state.error.is_some()
    }

    /// How many bytes can be read without blocking.
    pub(crate) fn buffered(&self) -> usize {
        self.inner.state.lock().chunks.iter().map(Bytes::len).sum()
    }

    /// Asks the pump for input, starting it on first use.
    fn request(&self, state: &mut State) {
        state.wanted = true;
        if let Some(source) = state.source.take() {
            let inner = self.inner.clone();
            let spawned = std::thread::Builder::new()
                .name("wasi-stdin-pump".into())
                .spawn(move || pump(inner, source));
            if let Err(e) = spawned {
                state.error = Some(format!("cannot start a thread to read stdin: {e}"));
                return;
            }
        }
        self.inner.want.notify_one();
    }

    fn read(&self, size: usize) -> StreamResult<Bytes> {
        let mut state = self.inner.state.lock();
        if let Some(chunk) = state.chunks.front_mut() {
            let taken = if chunk.len() <= size {
                state.chunks.pop_front().unwrap_or_default()
            } else {
                chunk.split_to(size)
            };
            return Ok(taken);
        }
        if let Some(error) = &state.error {
            return Err(StreamError::LastOperationFailed(wasmtime::format_err!(
                "{error}"
            )));
        }
        if state.eof {
            return Err(StreamError::Closed);
        }
        self.request(&mut state);
        Ok(Bytes::new())
    }
}

/// Reads from `source` whenever input is wanted and none is buffered.
fn pump(inner: Arc<Inner>, mut source: Box<dyn Read + Send>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        {
            let mut state = inner.state.lock();
            while !(state.wanted && state.chunks.is_empty()) {
                if state.closed {
                    return;
                }
                inner.want.wait(&mut state);
            }
        }
        let result = source.read(&mut buf);
        let wakers = {
            let mut state = inner.state.lock();
            state.wanted = false;
            let done = match result {
                Ok(0) => {
                    state.eof = true;
                    true
                }
                Ok(n) => {
                    state.chunks.push_back(Bytes::copy_from_slice(&buf[..n]));
                    false
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => false,
                Err(e) => {
                    state.error = Some(e.to_string());
                    true
                }
            };
            let wakers = std::mem::take(&mut state.wakers);
            if done {
                drop(state);
                for waker in wakers {
                    waker.wake();
                }
                return;
            }
            wakers
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

impl IsTerminal for SharedStdin {
    fn is_terminal(&self) -> bool {
        self.inner.is_terminal
    }
}

impl StdinStream for SharedStdin {
    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncRead + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for SharedStdin {
    async fn ready(&mut self) {
        self.readable().await
    }
}

impl InputStream for SharedStdin {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        SharedStdin::read(self, size)
    }
}

impl tokio::io::AsyncRead for SharedStdin {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.poll_readable(cx).is_pending() {
            return Poll::Pending;
        }
        match SharedStdin::read(&self, buf.remaining()) {
            Ok(bytes) => {
                buf.put_slice(&bytes);
                Poll::Ready(Ok(()))
            }
            Err(StreamError::Closed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(std::io::Error::other(e.to_string()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_order_then_closes() {
        let stdin = SharedStdin::from_reader(std::io::Cursor::new(b"hello world".to_vec()));
        let mut got = Vec::new();
        loop {
            wasmtime_wasi::runtime::in_tokio(stdin.readable());
            match stdin.read(4) {
                Ok(b) => got.extend_from_slice(&b),
                Err(StreamError::Closed) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, b"hello world");
    }

    #[test]
    fn nothing_is_read_until_wanted() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let stdin = SharedStdin::from_reader(reader);
        std::io::Write::write_all(&mut writer, b"abc").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(stdin.buffered(), 0);
        assert!(
            stdin.inner.state.lock().source.is_some(),
            "pump started early"
        );
        wasmtime_wasi::runtime::in_tokio(stdin.readable());
        assert_eq!(stdin.buffered(), 3);
        drop(writer);
    }
}
