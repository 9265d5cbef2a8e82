//! The supervisor: learns of every thread's start and end, decides the
//! program's one [`Outcome`], stops every other thread and joins them.
//!
//! It runs on the thread that called [`WasiThreads::run`](crate::WasiThreads::run),
//! fed through a `crossbeam-channel` by the guest threads themselves, so no
//! guest thread ever waits for it and nothing it needs lives in thread-local
//! storage.

use crate::stop::StopSignal;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::HashMap;
use std::fmt;
use std::thread::JoinHandle;
use std::time::Instant;

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
}

/// What a trap looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrapInfo {
    /// The trap's message, e.g. "wasm `unreachable` instruction executed".
    pub message: String,
    /// The wasm backtrace, as Wasmtime prints it, when one was captured.
    pub backtrace: Option<String>,
}

/// How a whole program ended: the first cause wins.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The program exited: `proc_exit(code)` in thread `tid`, or `_start`
    /// returning (code 0, [`MAIN_TID`]).
    Exit { code: i32, tid: u32 },
    /// Thread `tid` trapped.
    Trap { tid: u32, trap: TrapInfo },
    /// Host code panicked on thread `tid`; the panic was contained.
    HostPanic { tid: u32, message: String },
    /// The embedder cancelled the program through a [`CancelHandle`].
    Cancelled,
    /// The program ran past its wall-clock limit.
    TimedOut,
}

impl Outcome {
    /// The exit status a command-line runner should use: the guest's code,
    /// 134 (128 + SIGABRT, as `wasmtime run` does) for a trap or a host
    /// panic, and 124 (as `timeout(1)` does) for a time-out or cancellation.
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::Exit { code, .. } => *code,
            Outcome::Trap { .. } | Outcome::HostPanic { .. } => 134,
            Outcome::Cancelled | Outcome::TimedOut => 124,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Exit { code, tid } => write!(f, "exit code {code} (thread {tid})"),
            Outcome::Trap { tid, trap } => {
                write!(f, "thread {tid} trapped: {}", trap.message)?;
                if let Some(bt) = &trap.backtrace {
                    write!(f, "\n{bt}")?;
                }
                Ok(())
            }
            Outcome::HostPanic { tid, message } => {
                write!(f, "host code panicked on thread {tid}: {message}")
            }
            Outcome::Cancelled => f.write_str("cancelled by the embedder"),
            Outcome::TimedOut => f.write_str("timed out"),
        }
    }
}

/// Something that happened to one thread, as the embedder's event stream
/// ([`WasiThreads::events`](crate::WasiThreads::events)) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThreadEvent {
    /// Thread `tid` was spawned.
    Spawned { tid: u32 },
    /// Thread `tid` ended.
    Exited { tid: u32, exit: ThreadExit },
}

/// What guest threads tell the supervisor.
pub(crate) enum Event {
    /// A guest thread was handed to an OS thread.
    Started { serial: u64, tid: u32 },
    /// A TID was allocated but no OS thread could be started for it.
    SpawnFailed,
    /// A guest thread finished; its store is already dropped.
    Exited {
        serial: u64,
        tid: u32,
        exit: ThreadExit,
    },
    /// The embedder asked the program to stop.
    Cancel,
}

/// Stops a running program from any thread.
#[derive(Clone, Debug)]
pub struct CancelHandle {
    pub(crate) events: Sender<Event>,
}

impl CancelHandle {
    /// Asks the program to stop; its outcome is [`Outcome::Cancelled`] unless
    /// another cause came first. Does nothing once the program has ended.
    pub fn cancel(&self) {
        let _ = self.events.send(Event::Cancel);
    }
}

/// What the supervisor has heard of one guest thread.
#[derive(Default)]
struct Seen {
    started: bool,
    exited: bool,
}

/// The supervisor's state for one program run.
pub(crate) struct Supervisor {
    rx: Receiver<Event>,
    observer: Option<Sender<ThreadEvent>>,
    /// Guest threads heard of but not yet both started and exited.
    pending: HashMap<u64, Seen>,
    /// Spawns accounted for: handed to an OS thread, or failed.
    spawns_seen: u64,
    main: Option<JoinHandle<()>>,
    main_serial: u64,
}

impl Supervisor {
    pub(crate) fn new(rx: Receiver<Event>, observer: Option<Sender<ThreadEvent>>) -> Self {
        Supervisor {
            rx,
            observer,
            pending: HashMap::new(),
            spawns_seen: 0,
            main: None,
            main_serial: 0,
        }
    }

    /// Registers the main thread, which `run` starts on its own OS thread.
    pub(crate) fn track_main(&mut self, serial: u64, handle: JoinHandle<()>) {
        self.main = Some(handle);
        self.main_serial = serial;
        self.pending.insert(
            serial,
            Seen {
                started: true,
                exited: false,
            },
        );
    }

    /// Waits for the first cause that ends the program.
    pub(crate) fn wait_for_outcome(&mut self, deadline: Option<Instant>) -> Outcome {
        loop {
            let event = match deadline {
                Some(deadline) => match self.rx.recv_deadline(deadline) {
                    Ok(event) => event,
                    Err(RecvTimeoutError::Timeout) => return Outcome::TimedOut,
                    // Unreachable while the program holds a sender; treat it
                    // as the embedder going away.
                    Err(RecvTimeoutError::Disconnected) => return Outcome::Cancelled,
                },
                None => match self.rx.recv() {
                    Ok(event) => event,
                    Err(_) => return Outcome::Cancelled,
                },
            };
            if let Some(outcome) = self.record(event) {
                return outcome;
            }
        }
    }

    /// Books an event; returns the outcome if the event ends the program.
    fn record(&mut self, event: Event) -> Option<Outcome> {
        match event {
            Event::Started { serial, tid } => {
                self.spawns_seen += 1;
                self.observe(ThreadEvent::Spawned { tid });
                self.pending.entry(serial).or_default().started = true;
                self.forget_if_done(serial);
                None
            }
            Event::SpawnFailed => {
                self.spawns_seen += 1;
                None
            }
            Event::Exited { serial, tid, exit } => {
                log::debug!("thread {tid} ended: {exit:?}");
                self.pending.entry(serial).or_default().exited = true;
                self.forget_if_done(serial);
                let outcome = match &exit {
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
                };
                self.observe(ThreadEvent::Exited { tid, exit });
                outcome
            }
            Event::Cancel => Some(Outcome::Cancelled),
        }
    }

    fn observe(&self, event: ThreadEvent) {
        if let Some(observer) = &self.observer {
            let _ = observer.send(event);
        }
    }

    fn forget_if_done(&mut self, serial: u64) {
        if matches!(self.pending.get(&serial), Some(seen) if seen.started && seen.exited) {
            self.pending.remove(&serial);
        }
    }

    /// After the stop signal: waits until every guest thread has ended,
    /// given that `spawns_total` spawns were ever allocated (the allocator is
    /// closed, so no more come), and joins the main thread. Threads still
    /// running at `deadline` are given up on; returns how many.
    pub(crate) fn wait_for_all(&mut self, spawns_total: u64, deadline: Instant) -> usize {
        while self.spawns_seen < spawns_total || !self.pending.is_empty() {
            match self.rx.recv_deadline(deadline) {
                // Causes that arrive now lose: the outcome is decided.
                Ok(event) => {
                    let _ = self.record(event);
                }
                Err(_) => break,
            }
        }
        if !self.pending.contains_key(&self.main_serial)
            && let Some(main) = self.main.take()
        {
            // It has sent its last event; it only has to return.
            let _ = main.join();
        }
        self.pending.len() + (spawns_total.saturating_sub(self.spawns_seen)) as usize
    }
}

/// Makes the ending visible to every thread: running wasm through the epoch,
/// sleepers through the stop signal, parked threads through the parking lot.
pub(crate) fn stop_everything(
    engine: &wasmtime::Engine,
    stop: &StopSignal,
    parking: &crate::wait::ParkingLot,
) {
    if stop.is_stopped() {
        return;
    }
    stop.trigger();
    parking.wake_all();
    // Every program store has an epoch deadline one tick ahead, so a single
    // tick sends each running thread into its deadline callback, which sees
    // the stop signal and unwinds.
    engine.increment_epoch();
}
