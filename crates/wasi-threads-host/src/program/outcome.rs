//! What the embedder sees of how a program ran: how threads and programs
//! end ([`ThreadExit`], [`Outcome`], [`TrapInfo`]) and the event stream
//! ([`ThreadEvent`]). Plain data: the state machine that produces them is
//! [`super::lifecycle`], which uses this module and not the other way round.

use std::fmt;
use std::sync::Arc;

/// The TID reported for the main thread (the one that runs `_start`); the
/// wasi-threads ABI gives spawned threads TIDs from 1 up.
pub const MAIN_TID: u32 = 0;

/// How one guest thread ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThreadExit {
    /// Its entry point (`_start` or `wasi_thread_start`) returned.
    Returned,
    /// It called `proc_exit` with this code.
    Exit(i32),
    /// It trapped.
    Trap(TrapInfo),
    /// The supervisor stopped it because the program was ending.
    Stopped,
    /// Host code running on it panicked (an embedder's host function, say).
    HostPanic(String),
}

impl ThreadExit {
    /// Whether this exit of thread `tid` ends the whole program.
    pub fn ends_program(&self, tid: u32) -> bool {
        match self {
            ThreadExit::Returned => tid == MAIN_TID,
            ThreadExit::Stopped => false,
            ThreadExit::Exit(_) | ThreadExit::Trap(_) | ThreadExit::HostPanic(_) => true,
        }
    }

    /// The program's outcome if this exit of thread `tid` ends it.
    pub(crate) fn outcome(&self, tid: u32) -> Option<Outcome> {
        match self {
            ThreadExit::Returned if tid == MAIN_TID => Some(Outcome::Exit { code: 0, tid }),
            ThreadExit::Returned | ThreadExit::Stopped => None,
            ThreadExit::Exit(code) => Some(Outcome::Exit { code: *code, tid }),
            ThreadExit::Trap(trap) => Some(Outcome::Trap {
                tid,
                trap: trap.clone(),
            }),
            ThreadExit::HostPanic(message) => Some(Outcome::HostPanic {
                tid,
                message: message.clone(),
            }),
        }
    }
}

/// Why a thread trapped: the error its entry point returned, with its
/// message and wasm backtrace as text.
///
/// [`trap_code`](Self::trap_code) tells a trap of the engine
/// ([`Trap::OutOfFuel`](wasmtime::Trap::OutOfFuel),
/// [`Trap::StackOverflow`](wasmtime::Trap::StackOverflow), an embedder's
/// epoch [`Trap::Interrupt`](wasmtime::Trap::Interrupt), ...), and
/// [`error`](Self::error) is the original error, so that an error returned
/// by an embedder's own host function comes back as itself:
///
/// ```no_run
/// # use wasi_threads_host::Outcome;
/// # #[derive(Debug)] struct MyError;
/// # impl std::fmt::Display for MyError {
/// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("mine") }
/// # }
/// # impl std::error::Error for MyError {}
/// # fn check(outcome: Outcome) {
/// if let Outcome::Trap { trap, .. } = &outcome {
///     if trap.trap_code() == Some(wasmtime::Trap::OutOfFuel) { /* ... */ }
///     if let Some(mine) = trap.error().downcast_ref::<MyError>() { /* ... */ }
/// }
/// # }
/// ```
///
/// Two `TrapInfo`s are equal when their trap codes, messages and backtraces
/// are.
#[derive(Clone)]
pub struct TrapInfo {
    message: String,
    backtrace: Option<String>,
    error: Arc<wasmtime::Error>,
}

impl TrapInfo {
    pub(crate) fn new(message: String, backtrace: Option<String>, error: wasmtime::Error) -> Self {
        TrapInfo {
            message,
            backtrace,
            error: Arc::new(error),
        }
    }

    /// The trap's message, e.g. "wasm `unreachable` instruction executed";
    /// for an error of a host function, its chain of causes joined by ": ".
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The wasm backtrace, as Wasmtime prints it (in the offsets of the
    /// module the user built when the program kept its offset map), when one
    /// was captured.
    pub fn backtrace(&self) -> Option<&str> {
        self.backtrace.as_deref()
    }

    /// The engine's trap code, when the thread ended on one (rather than on
    /// an error of a host function).
    pub fn trap_code(&self) -> Option<wasmtime::Trap> {
        self.error.downcast_ref::<wasmtime::Trap>().copied()
    }

    /// The error the thread's entry point returned, for
    /// [`downcast_ref`](wasmtime::Error::downcast_ref) to an embedder's own
    /// error type.
    pub fn error(&self) -> &wasmtime::Error {
        &self.error
    }
}

impl PartialEq for TrapInfo {
    fn eq(&self, other: &Self) -> bool {
        self.trap_code() == other.trap_code()
            && self.message == other.message
            && self.backtrace == other.backtrace
    }
}

impl Eq for TrapInfo {}

impl fmt::Debug for TrapInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrapInfo")
            .field("trap_code", &self.trap_code())
            .field("message", &self.message)
            .field("backtrace", &self.backtrace)
            .finish()
    }
}

/// The message, then the backtrace on the lines after it when there is one.
impl fmt::Display for TrapInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(bt) = &self.backtrace {
            write!(f, "\n{bt}")?;
        }
        Ok(())
    }
}

/// How a whole program ended: the first cause wins.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The program exited: `proc_exit(code)` in thread `tid`, or `_start`
    /// returning (code 0, [`MAIN_TID`]).
    Exit {
        /// The exit code.
        code: i32,
        /// The thread that exited.
        tid: u32,
    },
    /// Thread `tid` trapped.
    Trap {
        /// The thread that trapped.
        tid: u32,
        /// The trap.
        trap: TrapInfo,
    },
    /// Host code panicked on thread `tid`; the panic was contained.
    HostPanic {
        /// The thread the host code ran on.
        tid: u32,
        /// The panic's message.
        message: String,
    },
    /// The embedder cancelled the program through a [`CancelHandle`](crate::CancelHandle).
    Cancelled,
    /// The program ran past its wall-clock limit.
    TimedOut,
    /// In the schedule mode: every thread was blocked (waiting, joining,
    /// sleeping) with nothing left that could wake it. Run normally, the
    /// program would hang here.
    Deadlock {
        /// The blocked threads.
        blocked: Vec<u32>,
    },
}

impl Outcome {
    /// The exit status a command-line runner should use: the guest's code,
    /// 134 (128 + SIGABRT, as `wasmtime run` does) for a trap or a host
    /// panic, and 124 (as `timeout(1)` does) for a time-out, a cancellation
    /// or a deadlock (a hang, had the program run normally).
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::Exit { code, .. } => *code,
            Outcome::Trap { .. } | Outcome::HostPanic { .. } => 134,
            Outcome::Cancelled | Outcome::TimedOut | Outcome::Deadlock { .. } => 124,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Exit { code, tid } => write!(f, "exit code {code} (thread {tid})"),
            Outcome::Trap { tid, trap } => write!(f, "thread {tid} trapped: {trap}"),
            Outcome::HostPanic { tid, message } => {
                write!(f, "host code panicked on thread {tid}: {message}")
            }
            Outcome::Cancelled => f.write_str("cancelled by the embedder"),
            Outcome::TimedOut => f.write_str("timed out"),
            Outcome::Deadlock { blocked } => {
                write!(
                    f,
                    "deadlock: every thread is blocked for good (threads {blocked:?})"
                )
            }
        }
    }
}

/// Something that happened to one thread, as the embedder's event stream
/// ([`WasiThreads::events`](crate::WasiThreads::events)) reports it.
///
/// Events are sent where they happen, in causal order: a thread's `Spawned`
/// is sent by the spawning thread before the new thread can run, so it
/// precedes that thread's `Exited` and anything the spawner does after
/// `thread-spawn` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ThreadEvent {
    /// Thread `tid` was spawned.
    Spawned {
        /// The new thread.
        tid: u32,
    },
    /// Thread `tid` ended.
    Exited {
        /// The thread.
        tid: u32,
        /// How it ended.
        exit: ThreadExit,
    },
    /// Thread `tid` did not stop within the join timeout (it is stuck in
    /// host code that does not return); `run` returned without it and its OS
    /// thread was detached. It may still hold resources.
    Abandoned {
        /// The thread.
        tid: u32,
    },
}
