//! [`Stdio`]: which streams a program's descriptors 0, 1 and 2 are, given
//! in one place.

use super::stdin::SharedStdin;
use super::stdio::SharedOutput;
use wasmtime_wasi::WasiCtxBuilder;

/// A program's stdin, stdout and stderr, given once: to
/// [`Runner::stdio`](crate::Runner::stdio) or
/// [`WasiThreads::wasi`](crate::WasiThreads::wasi).
///
/// Every stream given here is shared by the program's threads without
/// letting one stall the others: a thread waiting for input, or writing to
/// a pipe nobody reads, holds nothing another thread needs, and leaves when
/// the program stops. A stream not given is the WASI context's own
/// (`WasiCtxBuilder`'s default: an empty stdin, output discarded).
///
/// ```
/// use wasi_threads_host::{SharedOutput, SharedStdin, Stdio};
///
/// // The process's own streams (what `Runner` uses unless told otherwise).
/// let inherited = Stdio::inherit();
///
/// // Input from memory, output kept in memory, errors to a file.
/// let (stdout, captured) = SharedOutput::memory(1 << 20);
/// let log = std::fs::File::create(std::env::temp_dir().join("guest-stderr.txt"))?;
/// let custom = Stdio::new()
///     .stdin(SharedStdin::from_bytes("one\ntwo\n"))
///     .stdout(stdout)
///     .stderr(SharedOutput::from_writer(log));
/// // After the run: `captured.contents()` is what the guest wrote to stdout.
/// # let _ = (inherited, custom, captured);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Stdio {
    stdin: Option<SharedStdin>,
    stdout: Option<SharedOutput>,
    stderr: Option<SharedOutput>,
}

impl std::fmt::Debug for Stdio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stdio")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .finish()
    }
}

impl Stdio {
    /// No streams of its own: the guest's stdin is empty and what it writes
    /// to stdout and stderr is discarded (unless the WASI context was given
    /// streams of its own).
    pub fn new() -> Self {
        Self::default()
    }

    /// The process's stdin, stdout and stderr ([`SharedStdin::inherit`],
    /// [`SharedOutput::stdout`], [`SharedOutput::stderr`]).
    pub fn inherit() -> Self {
        Stdio {
            stdin: Some(SharedStdin::inherit()),
            stdout: Some(SharedOutput::stdout()),
            stderr: Some(SharedOutput::stderr()),
        }
    }

    /// The guest's stdin (a pipe, a file, bytes in memory: see
    /// [`SharedStdin`]).
    pub fn stdin(mut self, stdin: SharedStdin) -> Self {
        self.stdin = Some(stdin);
        self
    }

    /// The guest's stdout (the process's, a file, a pipe, memory: see
    /// [`SharedOutput`]).
    pub fn stdout(mut self, stdout: SharedOutput) -> Self {
        self.stdout = Some(stdout);
        self
    }

    /// The guest's stderr, as [`stdout`](Self::stdout).
    pub fn stderr(mut self, stderr: SharedOutput) -> Self {
        self.stderr = Some(stderr);
        self
    }

    /// Gives `builder` these streams, replacing any it had; the streams
    /// not given stay the builder's.
    pub(crate) fn apply(&self, builder: &mut WasiCtxBuilder) {
        if let Some(stdin) = &self.stdin {
            builder.stdin(stdin.clone());
        }
        if let Some(stdout) = &self.stdout {
            builder.stdout(stdout.clone());
        }
        if let Some(stderr) = &self.stderr {
            builder.stderr(stderr.clone());
        }
    }

    /// Whether the guest's stdout is the process's.
    pub(crate) fn writes_process_stdout(&self) -> bool {
        self.stdout
            .as_ref()
            .is_some_and(|out| out.is_process_stdout())
    }

    pub(crate) fn into_parts(
        self,
    ) -> (
        Option<SharedStdin>,
        Option<SharedOutput>,
        Option<SharedOutput>,
    ) {
        (self.stdin, self.stdout, self.stderr)
    }
}
